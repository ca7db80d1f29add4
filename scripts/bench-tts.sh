#!/usr/bin/env bash
# The tts benchmark: installs its anchor (piper-tts, Piper's own Python runtime) into .venv,
# fetches the voice and the chat model, and runs `cpipe bench tts --pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
scripts/fetch-models.sh piper
scripts/fetch-models.sh smollm2
if ! .venv/bin/python -c "import importlib.metadata as m; assert m.version('piper-tts') == '1.8.0'" 2>/dev/null; then
  echo "bench: installing piper-tts==1.8.0 into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check piper-tts==1.8.0
fi
cargo build --release --locked -p servers --bin cpipe
exec target/release/cpipe bench tts --python .venv/bin/python --pipeline "$@"
