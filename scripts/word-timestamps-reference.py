#!/usr/bin/env python3
"""Writes models/tests/data/jfk-words-faster-whisper.json: faster-whisper's word times for
jfk.wav (word_timestamps=True, greedy like cpipe, the same tiny.en weights cpipe imports), the
reference cpipe's word timing is tested against.

Needs faster-whisper (pip install faster-whisper==1.2.1) and scripts/fetch-models.sh whisper.
Usage: scripts/word-timestamps-reference.py [MODELS_DIR]
"""
import json
import os
import sys

from faster_whisper import WhisperModel
import faster_whisper

models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/cpipe/models")
model = WhisperModel(os.path.join(models, "faster-whisper-tiny.en"), device="cpu", compute_type="float32")
segments, _ = model.transcribe(
    os.path.join(models, "jfk.wav"), beam_size=1, language="en", word_timestamps=True, vad_filter=False
)
words = [
    {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3), "probability": round(w.probability, 3)}
    for s in segments
    for w in s.words
]
out = os.path.join(os.path.dirname(__file__), "..", "models", "tests", "data", "jfk-words-faster-whisper.json")
with open(out, "w") as f:
    json.dump({"source": f"faster-whisper {faster_whisper.__version__}, tiny.en, beam_size=1", "words": words}, f, indent=1)
    f.write("\n")
print(f"wrote {len(words)} words to {os.path.normpath(out)}")
