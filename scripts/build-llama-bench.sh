#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, the anchor of `cpipe bench chat`, from the llama.cpp that
# the PyPI source package llama-cpp-python==0.3.36 vendors. Prints the binary's path.
set -euo pipefail
root="${CPIPE_TOOLS:-$HOME/.cache/cpipe/tools}"
bin="$root/llama.cpp/build/bin/llama-bench"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
command -v cmake >/dev/null || { echo "build-llama-bench: cmake is missing (apt-get install cmake)" >&2; exit 1; }
mkdir -p "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet scikit-build-core >&2
"$work/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
  -d "$work" llama-cpp-python==0.3.36 >&2
tar xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
rm -rf "$root/llama.cpp"
mv "$work/llama_cpp_python-0.3.36/vendor/llama.cpp" "$root/llama.cpp"
cmake -S "$root/llama.cpp" -B "$root/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$root/llama.cpp/build" -j"$(nproc)" --target llama-bench >&2
echo "$bin"
