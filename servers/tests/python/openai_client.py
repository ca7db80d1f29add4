"""The official OpenAI Python SDK against `cpipe --serve http`: every endpoint, and the
errors it must turn into its own exception types. Usage: openai_client.py BASE_URL JFK_WAV OUT_DIR
Prints one line per check; exits non-zero (with the reason) on the first that fails."""

import json
import math
import sys
import urllib.error
import urllib.request

import openai
from openai import OpenAI

base_url, jfk, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def check(what, condition, detail=""):
    if not condition:
        sys.exit(f"FAILED {what}: {detail}")
    print(f"ok {what}")


ids = {m.id for m in client.models.list()}
check("models lists the live servers", {"chat", "stt", "tts", "search"} <= ids, ids)

question = [{"role": "user", "content": "What is the capital of France?"}]
whole = client.chat.completions.create(model="chat", messages=question, max_tokens=12, temperature=0)
text = whole.choices[0].message.content
check("chat answers", len(text) > 0 and whole.usage.completion_tokens > 0, whole)
check("chat reports usage", whole.usage.prompt_tokens > 0 and whole.usage.total_tokens
      == whole.usage.prompt_tokens + whole.usage.completion_tokens, whole.usage)

pieces, usage = [], None
for chunk in client.chat.completions.create(model="chat", messages=question, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
check("a streamed reply is the whole reply, token by token", "".join(pieces) == text and len(pieces) > 3,
      f"{pieces!r} vs {text!r}")
check("a stream ends with its usage", usage is not None and usage.completion_tokens == whole.usage.completion_tokens,
      usage)

with open(jfk, "rb") as f:
    audio = f.read()


def transcribe(fmt, **extra):
    return client.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", audio), response_format=fmt,
                                              **extra)


check("transcription json", "fellow Americans" in transcribe("json").text)
check("transcription text", "fellow Americans" in transcribe("text"))
srt = transcribe("srt")
check("transcription srt", srt.startswith("1\n00:00:") and " --> " in srt, srt)
vtt = transcribe("vtt")
check("transcription vtt", vtt.startswith("WEBVTT\n\n00:00:"), vtt)
verbose = transcribe("verbose_json", timestamp_granularities=["word", "segment"])
check("transcription verbose_json has segments", len(verbose.segments) >= 1 and verbose.duration > 10, verbose)
words = verbose.words
check("transcription words are timed in order", len(words) > 15 and all(
    a.start <= b.start for a, b in zip(words, words[1:])), words)

spoken = f"{out_dir}/speech.wav"
said = "Hello world. This is a test of the speech bridge."
with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=said,
                                                        response_format="wav") as response:
    response.stream_to_file(spoken)
with open(spoken, "rb") as f:
    heard = client.audio.transcriptions.create(model="stt", file=("speech.wav", f)).text.lower()
check("speech, saved and transcribed back", "test" in heard and "speech" in heard, heard)
pcm = client.audio.speech.create(model="tts", voice="alloy", input="Hello.", response_format="pcm").content
check("speech as pcm is 24 kHz 16-bit", len(pcm) % 2 == 0 and 0.2 < len(pcm) / 48000 < 3, len(pcm))

vectors = client.embeddings.create(model="search", input=[
    "The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]).data
check("embeddings have the model's dimension", [len(v.embedding) for v in vectors] == [384] * 3)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


a, b, c = (v.embedding for v in vectors)
check("paraphrases embed closer than unrelated text", cosine(a, b) > cosine(a, c) + 0.3, (cosine(a, b), cosine(a, c)))
floats = client.embeddings.create(model="search", input="The cat sits on the mat.", encoding_format="float")
check("float and base64 embeddings agree", max(abs(x - y) for x, y in zip(floats.data[0].embedding, a)) < 1e-6)


def raises(what, error_type, call, words):
    try:
        call()
    except error_type as e:
        message = str(e)
        check(what, all(w in message for w in words), message)
        return
    except Exception as e:  # noqa: BLE001 - report the wrong type
        sys.exit(f"FAILED {what}: raised {type(e).__name__}: {e}")
    sys.exit(f"FAILED {what}: no error")


raises("an empty conversation is a BadRequestError", openai.BadRequestError,
       lambda: client.chat.completions.create(model="chat", messages=[]), ["messages", "empty"])
raises("tools are refused with a BadRequestError", openai.BadRequestError,
       lambda: client.chat.completions.create(model="chat", messages=question, tools=[
           {"type": "function", "function": {"name": "f", "parameters": {}}}]), ["tool calling"])
raises("an unknown voice is a BadRequestError naming the voices", openai.BadRequestError,
       lambda: client.audio.speech.create(model="tts", voice="nobody", input="Hi."), ["nobody", "joe"])
raises("mp3 is refused with the formats there are", openai.BadRequestError,
       lambda: client.audio.speech.create(model="tts", voice="alloy", input="Hi.", response_format="mp3"),
       ["wav or pcm"])
raises("a text file is not audio", openai.BadRequestError,
       lambda: client.audio.transcriptions.create(model="stt", file=("notes.txt", b"hello")), ["WAV"])
raises("a prompt over the context window is a BadRequestError", openai.BadRequestError,
       lambda: client.chat.completions.create(model="chat", messages=[
           {"role": "user", "content": "word " * 20000}]), ["context"])



def post(path, body):
    request = urllib.request.Request(f"{base_url}{path}", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


status, body = post("/chat/completions", b"{not json")
check("a body that is not JSON gets a JSON 400", status == 400 and "not valid JSON" in body["error"]["message"], body)
status, body = post("/chat/completions", json.dumps({"messages": question}).encode())
check("a missing model gets a 400 naming it", status == 400 and body["error"]["param"] == "model", body)
print("all ok")
