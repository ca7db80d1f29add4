#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
scripts/fetch-models.sh smollm2
scripts/fetch-models.sh piper
scripts/fetch-models.sh whisper
scripts/fetch-models.sh minilm
# A clean clone builds once: incremental caches would only take disk.
export CARGO_INCREMENTAL=0
export CPIPE_PYTHON="$PWD/.venv/bin/python" CPIPE_PYTHON_NP07="$PWD/.venv-np07/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/check-portable.sh target/debug/cpipe
