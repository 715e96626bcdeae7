//go:build tools

// Package tools pins promtool (Prometheus' rule checker and rule unit tester) for the chart's
// monitoring tests; tools/promtool.sh builds it.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
