#!/usr/bin/env bash
# Builds promtool (Prometheus' rule checker and rule unit tester) from the pinned Go module in
# tools/promtool/module, for the chart's monitoring tests (tests/chart.rs checks the rendered
# PrometheusRule and the Grafana dashboard against a real controller's /metrics with it). It
# goes into a cache outside the checkout keyed by a hash of its pins, as tools/build.sh does
# for the cluster's binaries; the module lies one folder deeper than theirs so that their key
# (tools/*/go.mod) does not change with it.
#
# Usage: tools/promtool.sh            builds it if missing, prints the binary's path
#        tools/promtool.sh --print    prints the binary's path without building
set -euo pipefail

tools=$(cd "$(dirname "$0")" && pwd)
module=$tools/promtool/module
cache_root=${ABC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/tools}
key=$(cat "$module/go.mod" "$module/go.sum" "$module"/*.go "$tools/promtool.sh" <(go env GOVERSION) |
  sha256sum | cut -c1-16)
out=$cache_root/promtool-$key
bin=$out/bin/promtool

if [ "${1:-}" = "--print" ]; then
  echo "$bin"
  exit 0
fi

if [ ! -x "$bin" ]; then
  echo "building promtool from the pinned Prometheus module (first time: 15-30 minutes on 2 cores)" >&2
  start=$SECONDS
  mkdir -p "$out/logs"
  tmp=$out/tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # As tools/build.sh: the committed go.sum is the pin, no VCS stamp, no symbols.
  if ! (cd "$module" && go build -mod=readonly -buildvcs=false -ldflags="-s -w" \
        -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool) >"$out/logs/build.log" 2>&1; then
    echo "tools/promtool.sh: building promtool failed; its log is $out/logs/build.log" >&2
    tail -n 20 "$out/logs/build.log" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p "$out/bin"
  mv "$tmp/promtool" "$bin"
  rm -rf "$tmp"
  echo "  built in $((SECONDS - start)) s into $out" >&2
fi

echo "$bin"
