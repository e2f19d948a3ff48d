#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl) are installed; the tests start
# and stop their own server on 127.0.0.1. Installs Debian's `postgresql` package when absent.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then
  exit 0
fi
echo "PostgreSQL server not found: installing Debian package 'postgresql'" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: need root (or sudo) to install postgresql; install it and re-run" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
# the package may start a cluster of its own; the tests do not use it
$SUDO service postgresql stop >/dev/null 2>&1 || true
