"""The `wyoming` package's own async client against `cpipe --serve wyoming`, doing what Home
Assistant does, then what a broken client does. Usage: wyoming_client.py PORT JFK_WAV
Prints one line per check; exits non-zero (with the reason) on the first that fails."""

import asyncio
import sys
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

port, jfk = int(sys.argv[1]), sys.argv[2]
TIMEOUT = 120


def check(what, condition, detail=""):
    if not condition:
        sys.exit(f"FAILED {what}: {detail}")
    print(f"ok {what}", flush=True)


async def read(client):
    event = await asyncio.wait_for(client.read_event(), TIMEOUT)
    if event is None:
        sys.exit("FAILED: the server closed the connection")
    return event


def clip():
    with wave.open(jfk) as w:
        return w.getframerate(), w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())


async def transcribe(chunk_frames=1024):
    """Sends jfk.wav in chunks; returns the streamed chunks and the final transcript."""
    rate, width, channels, audio = clip()
    step = chunk_frames * width * channels
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        for at in range(0, len(audio), step):
            chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=audio[at:at + step])
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        types, chunks = [], []
        while True:
            event = await read(client)
            types.append(event.type)
            if event.type == "transcript-chunk":
                chunks.append(event.data["text"])
            if Transcript.is_type(event.type):
                return types, chunks, Transcript.from_event(event).text


async def synthesize(streamed):
    """Returns the events (audio chunks as their byte counts) of one synthesis."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        if streamed:
            await client.write_event(SynthesizeStart().event())
            for part in ["Hello there. How ", "are you today? I am ", "fine."]:
                await client.write_event(SynthesizeChunk(text=part).event())
            await client.write_event(Synthesize(text="Hello there. How are you today? I am fine.").event())
            await client.write_event(SynthesizeStop().event())
            last = "synthesize-stopped"
        else:
            await client.write_event(Synthesize(text="Hello there. How are you today?").event())
            last = "audio-stop"
        events = []
        while True:
            event = await read(client)
            events.append((event.type, len(event.payload or b"")))
            if event.type == last:
                return events


async def main():
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await read(client))
    check("describe gives the real model and voice", info.asr and info.tts
          and "tiny" in info.asr[0].models[0].name and info.tts[0].voices[0].name == "en_US-joe-medium", info)
    check("both services stream", info.asr[0].supports_transcript_streaming and info.tts[0].supports_synthesize_streaming)

    types, chunks, text = await transcribe()
    check("a transcript of the clip", "fellow Americans" in text and "country" in text, text)
    check("streamed as transcript-start, chunks, transcript-stop",
          types[0] == "transcript-start" and types[-2:] == ["transcript-stop", "transcript"] and len(chunks) >= 1, types)
    check("the chunks make the transcript", "".join(chunks).strip() == text.strip(), (chunks, text))

    whole = await synthesize(streamed=False)
    kinds = [t for t, _ in whole]
    check("synthesize gives audio-start, chunks, audio-stop",
          kinds[0] == "audio-start" and kinds[-1] == "audio-stop" and kinds.count("audio-start") == 1
          and sum(n for t, n in whole if t == "audio-chunk") > 22050, kinds)
    streamed = await synthesize(streamed=True)
    kinds = [t for t, _ in streamed]
    check("streamed synthesis speaks sentence by sentence, then synthesize-stopped",
          kinds.count("audio-start") == 3 and kinds.count("audio-stop") == 3 and kinds[-1] == "synthesize-stopped", kinds)

    results = await asyncio.gather(*(transcribe(chunk_frames=n) for n in (512, 1024, 2048)))
    check("three clients at once each get their own transcript",
          all("fellow Americans" in text for _, _, text in results), [r[2] for r in results])

    # What broken clients send.
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Event(type="frobnicate"))
        error = await read(client)
        check("an unknown event type gets an error event", error.type == "error" and "frobnicate" in error.data["text"], error)
        await client.write_event(AudioStart(rate=16000, width=4, channels=1).event())
        error = await read(client)
        check("audio of an unsupported width gets an error event", error.type == "error" and "width" in error.data["text"], error)
        await client.write_event(Describe().event())
        check("the connection goes on after them", (await read(client)).type == "info")

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 4}\n')
    writer.write(b"\x00" * 64)  # more than the header says
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    check("a payload longer than its header says gets an error", b'"error"' in line, line)
    rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    check("and the connection is closed", rest == b"" or b"payload_length" in rest, rest)
    writer.close()

    rate, width, channels, audio = clip()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = AsyncTcpClient("127.0.0.1", port)
    client._reader, client._writer = reader, writer
    await client.write_event(Transcribe().event())
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=audio[:64000]).event())
    writer.close()  # gone mid-stream
    _, _, text = await transcribe()
    check("a client that leaves mid-stream does not disturb the next", "fellow Americans" in text, text)
    print("all ok")


asyncio.run(main())
