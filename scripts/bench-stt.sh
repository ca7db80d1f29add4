#!/usr/bin/env bash
# The stt benchmark: builds its anchors (whisper.cpp's CLI; faster-whisper 1.2.1 into .venv),
# fetches the models, and runs `cpipe bench stt`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
scripts/fetch-models.sh whisper
scripts/build-whisper-cli.sh
if ! .venv/bin/python -c "import importlib.metadata as m; assert m.version('faster-whisper') == '1.2.1'" 2>/dev/null; then
  echo "bench: installing faster-whisper==1.2.1 into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check faster-whisper==1.2.1
fi
cargo build --release --locked -p servers --bin cpipe
exec target/release/cpipe bench stt --python .venv/bin/python "$@"
