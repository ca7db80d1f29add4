#!/usr/bin/env bash
# The README's main command: fetches the offline default model, builds cpipe, starts the chat
# server on it, asks it a question with the streaming example client, lists the servers, and
# stops the server. Uses a private pipe directory so it never disturbs running servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh smollm2
cargo build --release --locked -p servers --bin cpipe -p examples --bin chat_client
cpipe=target/release/cpipe
demo_dir=$(mktemp -d /tmp/cpipe-demo.XXXXXX)
export CPIPE_DIR="$demo_dir"

"$cpipe" --serve chat --model smollm2 --system "You are a helpful assistant." &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
for _ in $(seq 100); do "$cpipe" chat ping --timeout 1 >/dev/null 2>&1 && break; sleep 0.1; done

set -x
target/release/chat_client "What is the capital of France?"
"$cpipe" --list
"$cpipe" chat chat --text --data "Name three primary colours." -j max_tokens=60
"$cpipe" chat stop
set +x
wait $server
echo "demo: ok"
