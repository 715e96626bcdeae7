#!/usr/bin/env bash
# Installs the pinned cargo-nextest (the runner of `make test`: test binaries side by side, test
# groups for what must not overlap, .config/nextest.toml) from crates.io, once, into a cache
# outside the checkout keyed by its version, so fresh clones on the same machine reuse it.
#
# Usage: tools/nextest.sh            installs it if missing, prints the binary's path
#        tools/nextest.sh --print    prints the binary's path without installing
set -euo pipefail

version=0.9.151
root=$(cd "$(dirname "$0")/.." && pwd)
cache_root=${ABC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/tools}
out=$cache_root/cargo-nextest-$version
bin=$out/bin/cargo-nextest

if [ "${1:-}" = "--print" ]; then
  echo "$bin"
  exit 0
fi

if [ ! -x "$bin" ] || [ ! -f "$out/.complete" ]; then
  echo "installing cargo-nextest $version from crates.io (first time: about 12 CPU-minutes)" >&2
  start=$SECONDS
  rm -rf "$out"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  # From the checkout, so that rustup picks the project's pinned toolchain; its own target
  # directory, so that the project's build cache (CARGO_TARGET_DIR) is left alone. --locked:
  # nextest's own Cargo.lock, not whatever its dependencies' newest versions are today. No
  # self-update: the version is the pin above.
  (cd "$root" && CARGO_TARGET_DIR=$build cargo install cargo-nextest --locked --quiet \
    --version "=$version" --no-default-features --features default-no-update --root "$out")
  touch "$out/.complete"
  echo "  installed in $((SECONDS - start)) s into $out" >&2
fi

echo "$bin"
