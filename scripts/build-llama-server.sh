#!/usr/bin/env bash
# Builds llama.cpp's llama-server, the anchor of `cpipe bench bridges` (its own
# /v1/chat/completions against cpipe's http bridge), in the llama.cpp tree that
# scripts/build-llama-bench.sh unpacks from llama-cpp-python==0.3.36. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${CPIPE_TOOLS:-$HOME/.cache/cpipe/tools}"
bin="$root/llama.cpp/build/bin/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
scripts/build-llama-bench.sh >/dev/null
cmake -S "$root/llama.cpp" -B "$root/llama.cpp/build" -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$root/llama.cpp/build" -j"$(nproc)" --target llama-server >&2
echo "$bin"
