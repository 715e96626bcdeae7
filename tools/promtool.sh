#!/usr/bin/env bash
# Builds promtool (Prometheus' rule checker and rule unit tester) from the pinned Go module in
# tools/promtool/module, for the chart's monitoring tests (tests/chart.rs checks the rendered
# PrometheusRule and the Grafana dashboard against a real controller's /metrics with it); cached
# by tools/gomodule.sh. First time: 15-30 minutes on 2 cores.
#
# Usage: tools/promtool.sh            builds it if missing, prints the binary's path
#        tools/promtool.sh --print    prints the binary's path without building
set -euo pipefail
bin=$("$(dirname "$0")/gomodule.sh" promtool ${1:+"$1"} github.com/prometheus/prometheus/cmd/promtool)
echo "$bin/promtool"
