#!/usr/bin/env bash
# Make sure a font with Chinese glyphs is installed, so figures render Chinese labels.
# Installs Debian's small `fonts-wqy-microhei` when no CJK font is present; never fatal:
# without root or sudo it prints how to install one and carries on.
set -uo pipefail
if command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=zh family 2>/dev/null | head -1)" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "note: no Chinese font found; install one (e.g. apt-get install fonts-wqy-microhei) for Chinese labels in figures" >&2
    exit 0
  fi
fi
echo "installing a Chinese font (Debian package fonts-wqy-microhei)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq fonts-wqy-microhei fontconfig >/dev/null 2>&1 \
  || echo "note: could not install fonts-wqy-microhei; Chinese labels in figures may show as boxes" >&2
exit 0
