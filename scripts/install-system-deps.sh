#!/usr/bin/env bash
# Installs the Debian packages cpipe's build, demo and tests need, when run as root and they
# are missing (otherwise says which to install). Idempotent.
set -euo pipefail

need_apt=()
# pkg-config and libasound2-dev: ALSA for audio playback (rodio/cpal); libespeak-ng-dev: the
# phonemizer of the tts server (brings espeak-ng-data); cmake: builds whisper.cpp; flite:
# speaks test sentences for the stt tests; tmux: the dashboard's tests drive it in a real
# terminal; curl: the http bridge's tests ask it as monitoring would.
for pkg in pkg-config python3-venv libasound2-dev libespeak-ng-dev cmake flite tmux curl; do
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

