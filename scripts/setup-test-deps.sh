#!/usr/bin/env bash
# Installs what cpipe's build and tests need on a fresh Debian machine: the system packages
# (scripts/install-system-deps.sh) and a Python venv with the peers the compatibility tests
# drive. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-system-deps.sh

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
# The peers the compatibility tests drive: named-pipes 0.4.0 (the protocol's reference library),
# the official MCP SDK (a client of `cpipe mcp`), the official OpenAI SDK (a client of
# `--serve http`), the wyoming package (its client, as Home Assistant uses it, of
# `--serve wyoming`) and python-zeroconf (Home Assistant's discovery of it).
for pin in named-pipes==0.4.0 mcp==2.3.0 openai==3.51.0 wyoming==1.10.2 zeroconf==0.154.0; do
  pkg=${pin%%==*} version=${pin##*==}
  if ! .venv/bin/python -c "import importlib.metadata as m; assert m.version('$pkg') == '$version'" 2>/dev/null; then
    echo "setup: installing $pin into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check "$pin"
  fi
done
# named-pipes 0.7.0, the library's current release, in a venv of its own (one environment
# cannot hold two versions): its example clients and discovery run against cpipe's servers.
if [ ! -x .venv-np07/bin/python ]; then
  echo "setup: creating .venv-np07"
  python3 -m venv .venv-np07
fi
if ! .venv-np07/bin/python -c "import importlib.metadata as m; assert m.version('named-pipes') == '0.7.0'" 2>/dev/null; then
  echo "setup: installing named-pipes==0.7.0 into .venv-np07"
  .venv-np07/bin/pip install --quiet --disable-pip-version-check "named-pipes==0.7.0"
fi
echo "setup: ok (CPIPE_PYTHON=$PWD/.venv/bin/python, CPIPE_PYTHON_NP07=$PWD/.venv-np07/bin/python)"
