#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are installed: the browser test opens every
# generated HTML report in them. Installs Debian's `chromium` and `chromium-driver` when absent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "Chromium or chromedriver not found: installing Debian packages 'chromium' and 'chromium-driver'" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: need root (or sudo) to install chromium and chromium-driver; install them and re-run" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
