#!/usr/bin/env bash
# Builds commands from a pinned Go module of their own, tools/NAME/module, into a cache outside
# the checkout keyed by a hash of the module's pins and files, as tools/build.sh does for the
# cluster's binaries. The module lies one folder deeper than build.sh's so that their key
# (tools/*/go.mod) does not change with it. Used by tools/promtool.sh and tools/registry.sh.
#
# Usage: tools/gomodule.sh NAME [--print] PACKAGE...
#        builds the packages' commands if missing (unless --print), prints their bin directory
set -euo pipefail

tools=$(cd "$(dirname "$0")" && pwd)
name=$1
shift
print=false
if [ "${1:-}" = "--print" ]; then
  print=true
  shift
fi
module=$tools/$name/module
cache_root=${ABC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/tools}
key=$({
  cat "$module/go.mod" "$module/go.sum" "$tools/gomodule.sh"
  find "$module" -name '*.go' -print0 | sort -z | xargs -0 cat
  go env GOVERSION
  echo "$@"
} | sha256sum | cut -c1-16)
out=$cache_root/$name-$key
bin=$out/bin

if $print; then
  echo "$bin"
  exit 0
fi

if [ ! -f "$out/built" ]; then
  echo "building $name from its pinned Go module (first time: minutes)" >&2
  start=$SECONDS
  mkdir -p "$out/logs"
  tmp=$out/tmp
  rm -rf "$tmp" "$bin"
  mkdir -p "$tmp"
  # As tools/build.sh: the committed go.sum is the pin, no VCS stamp, no symbols.
  if ! (cd "$module" && go build -mod=readonly -buildvcs=false -ldflags="-s -w" -o "$tmp/" "$@") \
      >"$out/logs/build.log" 2>&1; then
    echo "tools/gomodule.sh: building $name failed; its log is $out/logs/build.log" >&2
    tail -n 20 "$out/logs/build.log" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp" "$bin"
  touch "$out/built"
  echo "  built in $((SECONDS - start)) s into $out" >&2
fi

echo "$bin"
