#!/usr/bin/env bash
# Installs what cpipe's build and tests need on a fresh Debian machine: system packages
# (when run as root and missing) and a Python venv with the peers the compatibility
# tests drive. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# pkg-config and libasound2-dev: ALSA for audio playback (rodio/cpal); libespeak-ng-dev: the
# phonemizer of the tts server (brings espeak-ng-data); cmake: builds whisper.cpp; flite:
# speaks test sentences for the stt tests.
for pkg in pkg-config python3-venv libasound2-dev libespeak-ng-dev cmake flite; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${need_apt[*]} (install them with sudo apt-get install)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
# The peers the compatibility tests drive: named-pipes (the protocol's reference library)
# and the official MCP SDK (a client of `cpipe mcp`).
for pin in named-pipes==0.4.0 mcp==2.3.0; do
  pkg=${pin%%==*} version=${pin##*==}
  if ! .venv/bin/python -c "import importlib.metadata as m; assert m.version('$pkg') == '$version'" 2>/dev/null; then
    echo "setup: installing $pin into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check "$pin"
  fi
done
echo "setup: ok (CPIPE_PYTHON=$PWD/.venv/bin/python)"
