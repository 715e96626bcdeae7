//go:build tools

// Package tools names the command tools/build.sh builds from this module, so that
// `go mod tidy` keeps its module as a direct requirement. It is never compiled.
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
