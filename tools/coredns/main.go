// Command coredns is CoreDNS with only the plugins the test cluster's real node uses: cluster
// DNS for Services from the kubernetes plugin, served on the node's address with no upstream
// (there is no forward plugin, so nothing leaves the machine). Fewer plugins keep the build
// short and the binary small.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is the subset of CoreDNS's plugin.cfg, in its order: a plugin sees the effects
// of every plugin after it in this list, so the order must stay CoreDNS's own.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"kubernetes",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
