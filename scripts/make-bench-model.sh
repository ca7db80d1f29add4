#!/usr/bin/env bash
# Makes a benchmark model no registry ships: random f16 weights in a real model's exact shape
# (scripts/make-bench-gguf.py, tokenizer copied from the offline SmolLM2, or for the Qwen shape
# from the offline Qwen2.5-Coder-0.5B), quantized with
# llama.cpp's llama-quantize built from the same vendored sources as llama-bench. Speed does not
# depend on the weights' values; the answers are noise. Prints the GGUF's path.
#
#   scripts/make-bench-model.sh [SHAPE] [TYPE]     e.g. llama-1b Q4_K_M (the defaults), Q3_K_M, Q5_K_M or Q8_0;
#                                                  qwen2.5-1.5b Q4_K_M
#   cpipe bench chat --model "$(scripts/make-bench-model.sh llama-1b Q4_K_M)"
set -euo pipefail
shape="${1:-llama-1b}"
type="${2:-Q4_K_M}"
here="$(cd "$(dirname "$0")" && pwd)"
models="${CPIPE_MODELS:-$HOME/.cache/cpipe/models}"
out="$models/bench-$shape-$type.gguf"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
case "$shape" in
  qwen*) tokenizer="$models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"; fetch="qwen-coder" ;;
  *) tokenizer="$models/SmolLM2-135M-Instruct.Q4_1.gguf"; fetch="" ;;
esac
[ -s "$tokenizer" ] || { echo "make-bench-model: $tokenizer is missing: run scripts/fetch-models.sh $fetch" >&2; exit 1; }
bench="$("$here/build-llama-bench.sh")"
build="$(dirname "$(dirname "$bench")")"
cmake --build "$build" -j"$(nproc)" --target llama-quantize >&2
llama="$(dirname "$build")"
work=$(mktemp -d "$models/.bench-model.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet numpy pyyaml tqdm >&2
PYTHONPATH="$llama/gguf-py" "$work/venv/bin/python" "$here/make-bench-gguf.py" \
  --shape "$shape" --tokenizer-from "$tokenizer" --out "$work/f16.gguf" >&2
LD_LIBRARY_PATH="$build/bin" "$build/bin/llama-quantize" "$work/f16.gguf" "$work/q.gguf" "$type" "$(nproc)" >&2
mv "$work/q.gguf" "$out"
echo "$out"
