#!/usr/bin/env python3
"""Computes reference sentence vectors with sentence-transformers (PyTorch) on the offline
all-MiniLM-L6-v2, for models/tests/embed.rs to compare cpipe's embedder against.

    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers==5.1.0
    /tmp/st/bin/python scripts/embedding-reference.py > models/tests/data/minilm-reference.json

Heavy (PyTorch), so the tests read the kept output instead of running this.
"""
import json
import os
import sys

from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is playing a guitar.",
    "The stock market fell sharply today.",
    "How do I bake sourdough bread?",
    "Paris is the capital of France.",
    "Named pipes let processes on one machine talk without a network stack.",
    "¿Dónde está la biblioteca?",
    "short",
    " ".join(["a long text that the model must cut to its window"] * 40),
]

models = os.environ.get("CPIPE_MODELS", os.path.expanduser("~/.cache/cpipe/models"))
model = SentenceTransformer(os.path.join(models, "all-MiniLM-L6-v2"), device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=False)
json.dump(
    {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 7) for x in v] for v in vectors],
    },
    sys.stdout,
)
