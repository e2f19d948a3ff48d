#!/usr/bin/env bash
# Print the secret salt of pseudonymous ids and erasure hashes, creating it once.
# The salt lives in .secrets/pseudonym-salt (git-ignored, readable by its owner only);
# the Makefile exports it as CRM_PSEUDONYM_SALT unless that is already set (a
# scheduler sets it from its own secret store). Keep the file: report ids and the
# erasure suppression list depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."
file=.secrets/pseudonym-salt
if [ ! -s "$file" ]; then
  umask 077
  mkdir -p .secrets
  tmp="$file.$$"
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$tmp"
  mv "$tmp" "$file"
  echo "created a pseudonym salt in $file (keep it; see README, Privacy)" >&2
fi
cat "$file"
