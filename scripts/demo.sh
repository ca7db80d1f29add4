#!/usr/bin/env bash
# The README's main command: builds cpipe, starts a server, queries it, lists it, stops it.
# Uses a private pipe directory so it never disturbs servers already running.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p servers --bin cpipe
cpipe=target/release/cpipe
demo_dir=$(mktemp -d /tmp/cpipe-demo.XXXXXX)
export CPIPE_DIR="$demo_dir"

"$cpipe" --serve echo &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
for _ in $(seq 50); do "$cpipe" echo ping --timeout 1 >/dev/null 2>&1 && break; sleep 0.1; done

set -x
"$cpipe" --list
"$cpipe" echo get_help --text
"$cpipe" echo echo -j greeting=hello -j n=3
"$cpipe" echo stream -j n=5 -j 'text=tick ' --text
"$cpipe" echo stop
set +x
wait $server
echo "demo: ok"
