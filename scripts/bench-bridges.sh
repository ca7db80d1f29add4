#!/usr/bin/env bash
# The bridges benchmark: builds its anchors (llama.cpp's llama-server; wyoming-faster-whisper
# 3.8.1 and wyoming-piper 2.5.2 into .venv-wyoming), fetches the models, and runs
# `cpipe bench bridges`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
scripts/fetch-models.sh all
scripts/build-llama-server.sh >/dev/null
if [ ! -x .venv-wyoming/bin/python ]; then
  echo "bench: creating .venv-wyoming"
  python3 -m venv .venv-wyoming
fi
for pin in wyoming-faster-whisper==3.8.1 wyoming-piper==2.5.2; do
  pkg=${pin%%==*} version=${pin##*==}
  if ! .venv-wyoming/bin/python -c "import importlib.metadata as m; assert m.version('$pkg') == '$version'" 2>/dev/null; then
    echo "bench: installing $pin into .venv-wyoming"
    .venv-wyoming/bin/pip install --quiet --disable-pip-version-check "$pin"
  fi
done
cargo build --release --locked -p servers --bin cpipe
exec target/release/cpipe bench bridges --wyoming-python .venv-wyoming/bin/python "$@"
