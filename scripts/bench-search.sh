#!/usr/bin/env bash
# The search benchmark: installs its anchors (sentence-transformers 5.1.0 on PyTorch, fastembed
# 0.9.1 with onnx 1.23.2 to export the model for it, and chromadb 1.5.9, into .venv: heavy, so
# not part of the tests), fetches the model, and runs
# `cpipe bench search`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
scripts/fetch-models.sh minilm
if ! .venv/bin/python -c "import sentence_transformers, fastembed, onnx, chromadb" 2>/dev/null; then
  echo "bench: installing sentence-transformers, fastembed, onnx and chromadb into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check sentence-transformers==5.1.0 \
    fastembed==0.9.1 onnx==1.23.2 chromadb==1.5.9
fi
cargo build --release --locked -p servers --bin cpipe
exec target/release/cpipe bench search --python .venv/bin/python "$@"
