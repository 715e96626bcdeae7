#!/usr/bin/env bash
# Builds the test node's private registry (the CNCF distribution registry, which tools/node.sh
# runs with basic auth) and its bcrypt htpasswd writer from the pinned Go module in
# tools/registry/module; cached by tools/gomodule.sh. First time: a few minutes.
#
# Usage: tools/registry.sh            builds them if missing, prints their bin directory
#        tools/registry.sh --print    prints their bin directory without building
set -euo pipefail
"$(dirname "$0")/gomodule.sh" registry ${1:+"$1"} \
  github.com/distribution/distribution/v3/cmd/registry abc-operator/tools/registry/htpasswd
