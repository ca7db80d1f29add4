"""Times one Wyoming server as Home Assistant uses it, with the `wyoming` package's client:
end of audio-stop -> transcript (jfk.wav sent in 1024-frame chunks, as fast as it goes), and
synthesize -> first audio-chunk. Called by `cpipe bench bridges` for cpipe's bridge and for
wyoming-faster-whisper and wyoming-piper alike.
Usage: bench-wyoming.py PORT {asr WAV | tts TEXT} REPETITIONS
Prints one JSON object: {"ms": [...], "text": "..."}."""

import asyncio
import json
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize


async def asr(port, path):
    with wave.open(path) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        audio = w.readframes(w.getnframes())
    step = 1024 * width * channels
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        for at in range(0, len(audio), step):
            await client.write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                                audio=audio[at:at + step]).event())
        start = time.perf_counter()
        await client.write_event(AudioStop().event())
        while True:
            event = await client.read_event()
            if Transcript.is_type(event.type):
                return (time.perf_counter() - start) * 1000, Transcript.from_event(event).text


async def tts(port, text):
    async with AsyncTcpClient("127.0.0.1", port) as client:
        start = time.perf_counter()
        await client.write_event(Synthesize(text=text).event())
        first, heard = None, 0
        while True:
            event = await client.read_event()
            if event.type == "audio-chunk":
                first = first or (time.perf_counter() - start) * 1000
                heard += len(event.payload)
            if event.type == "audio-stop":
                return first, f"{heard} bytes"


async def main():
    port, mode, arg, repetitions = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    run = asr if mode == "asr" else tts
    await run(port, arg)  # warm-up
    results = [await run(port, arg) for _ in range(repetitions)]
    print(json.dumps({"ms": [ms for ms, _ in results], "text": results[-1][1]}))


asyncio.run(main())
