#!/usr/bin/env bash
# The README's main command: fetches the offline default models, builds cpipe, starts the chat
# server and the tts server on them, asks a question with the streaming example client, runs
# the voice pipeline chat → tts (leaving the spoken reply in target/demo-reply.wav), has the stt
# server transcribe that reply back, lists the servers, and stops them. Uses a private pipe directory so it never disturbs running servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-deps.sh
scripts/fetch-models.sh smollm2
scripts/fetch-models.sh piper
scripts/fetch-models.sh whisper
cargo build --release --locked -p servers --bin cpipe -p examples --bin chat_client --bin voice_agent
cpipe=target/release/cpipe
demo_dir=$(mktemp -d /tmp/cpipe-demo.XXXXXX)
export CPIPE_DIR="$demo_dir"

"$cpipe" --serve chat --model smollm2 --system "You are a helpful assistant." &
server=$!
"$cpipe" --serve tts --voice joe 2>"$demo_dir/tts.log" &  # plays on the speakers if there are any
tts=$!
"$cpipe" --serve stt --whisper tiny.en --listen none 2>"$demo_dir/stt.log" &
stt=$!
trap 'kill $server $tts $stt 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
for name in chat tts stt; do
  for _ in $(seq 100); do "$cpipe" $name ping --timeout 1 >/dev/null 2>&1 && break; sleep 0.1; done
done

set -x
target/release/chat_client "What is the capital of France? Answer in one word."
"$cpipe" --list
"$cpipe" chat chat --text --data "Name three primary colours." -j max_tokens=60
target/release/voice_agent --wav target/demo-reply.wav "What is the capital of France? Answer in one word."
"$cpipe" stt transcribe -j "wav=$PWD/target/demo-reply.wav" --text --timeout 120
"$cpipe" chat stop
"$cpipe" tts stop
"$cpipe" stt stop
set +x
wait $server $tts $stt
echo "demo: ok (the spoken reply: target/demo-reply.wav)"
