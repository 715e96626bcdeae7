//go:build tools

// Package tools names the registry command tools/registry.sh builds from this module, so that
// `go mod tidy` keeps its module as a direct requirement. It is never compiled.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
