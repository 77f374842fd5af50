// Command coredns is CoreDNS with only the plugins the test cluster's DNS needs: the `kubernetes` plugin
// for Service and pod names, plus errors/log/health/ready/cache/bind. Upstream's main package links every
// plugin (cloud DNS providers, etcd, ...): several times the build time for nothing used here. This is the
// documented way to build a custom CoreDNS (a main that imports coremain and the chosen plugins).
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

// The plugins' order in a server block, as in upstream's plugin.cfg (which orders every plugin).
var directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
