#!/usr/bin/env bash
# Makes solc v$1 findable by py-solc-x (~/.solcx/solc-v$1), which ape-solidity uses.
# A native solc of that exact version on PATH is used as it is; otherwise a small
# wrapper runs this repository's solcjs bridge (tools/solc.js). Idempotent and cheap.
set -euo pipefail
version="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SOLCX_BINARY_PATH:-$HOME/.solcx}"
target="$dir/solc-v$version"
mkdir -p "$dir"
native="$(command -v solc || true)"
if [ -n "$native" ] && [ "$(readlink -f "$native")" != "$(readlink -f "$target")" ] \
   && "$native" --version 2>/dev/null | grep -q "Version: $version+"; then
  ln -sf "$native" "$target"
  exit 0
fi
wrapper="#!/bin/sh
# solc $version over solcjs, installed by $repo/tools/install-solc.sh
exec node \"$repo/tools/solc.js\" \"\$@\""
# Keep a working install (another clone's bridge is as good as ours); replace a broken one.
if ! "$target" --version 2>/dev/null | grep -q "Version: $version+"; then
  rm -f "$target"
  printf '%s\n' "$wrapper" > "$target"
  chmod +x "$target"
  echo "installed solc $version bridge at $target"
fi
