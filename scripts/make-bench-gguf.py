#!/usr/bin/env python3
"""Writes a GGUF of random f16 weights in the exact shape of a real model, for speed
benchmarks of models no registry ships (speed does not depend on the weights' values).

The tokenizer and chat template are copied from a real GGUF of a model with the same
vocabulary (SmolLM2's for the Llama shape, Qwen2.5-Coder-0.5B's for the Qwen shape). Quantize the result with llama.cpp's
llama-quantize (scripts/make-bench-model.sh does both).

Needs numpy, pyyaml and tqdm, and llama.cpp's gguf-py on PYTHONPATH (it is in the vendored
llama.cpp).
"""

import argparse
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

# Layer dimensions of real models. "vocab" must match the tokenizer's GGUF.
SHAPES = {
    # Llama-3.2-1B's layers, with SmolLM2's 49,152-token vocabulary (its tokenizer).
    "llama-1b": dict(
        arch="llama",
        hidden=2048,
        layers=16,
        heads=32,
        kv_heads=8,
        ffn=8192,
        rope_base=500000.0,
        context=8192,
        vocab=49152,
        bias=False,
        tied=True,
    ),
    # Qwen2.5-1.5B-Instruct's layers (the README's hub default), with Qwen2.5's 151,936-token
    # vocabulary (the offline Qwen2.5-Coder-0.5B's tokenizer): biases on queries, keys and
    # values, tied embeddings.
    "qwen2.5-1.5b": dict(
        arch="qwen2",
        hidden=1536,
        layers=28,
        heads=12,
        kv_heads=2,
        ffn=8960,
        rope_base=1000000.0,
        context=32768,
        vocab=151936,
        bias=True,
        tied=True,
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument(
        "--tokenizer-from", required=True, help="a real GGUF whose tokenizer to copy"
    )
    parser.add_argument("--out", required=True, help="the f16 GGUF to write")
    args = parser.parse_args()
    shape = SHAPES[args.shape]

    source = GGUFReader(args.tokenizer_from)
    tokens = source.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        print(f"{args.tokenizer_from} has no tokenizer", file=sys.stderr)
        return 2
    if len(tokens.data) != shape["vocab"]:
        print(
            f"{args.tokenizer_from} has {len(tokens.data)} tokens; the {args.shape} shape "
            f"needs {shape['vocab']}",
            file=sys.stderr,
        )
        return 2

    arch, hidden, heads = shape["arch"], shape["hidden"], shape["heads"]
    head_dim = hidden // heads
    writer = GGUFWriter(args.out, arch)
    writer.add_name(f"random {args.shape} (benchmark only)")
    writer.add_context_length(shape["context"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(shape["rope_base"])
    writer.add_layer_norm_rms_eps(1e-6 if arch == "qwen2" else 1e-5)
    writer.add_vocab_size(shape["vocab"])
    writer.add_file_type(1)  # mostly f16
    for name, field in source.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = GGUFValueType(field.types[0])
        sub_type = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type)

    rng = np.random.default_rng(0)

    def weights(*dims: int) -> np.ndarray:
        # Small values, as trained weights are: activations stay finite through the layers.
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(hidden, dtype=np.float32)

    kv = shape["kv_heads"] * head_dim
    writer.add_tensor("token_embd.weight", weights(shape["vocab"], hidden))
    for i in range(shape["layers"]):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(kv, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(kv, hidden))
        if shape["bias"]:
            writer.add_tensor(f"blk.{i}.attn_q.bias", np.zeros(hidden, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.attn_k.bias", np.zeros(kv, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.attn_v.bias", np.zeros(kv, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(shape["ffn"], hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(shape["ffn"], hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(hidden, shape["ffn"]))
    writer.add_tensor("output_norm.weight", norm())
    # No output.weight: the output layer is the token embeddings, as in Llama-3.2-1B and
    # Qwen2.5-1.5B.
    assert shape["tied"]

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
