// Command coredns is the local cluster's DNS: upstream CoreDNS with only the plugins its Corefile
// names (cluster/dns/Corefile, written by cluster/configs.sh). Upstream's main links every plugin
// (cloud providers, etcd, dnstap, forward...); this one links six. There is no forward plugin at
// all, so no query can be sent to a resolver outside the machine: names outside the cluster's
// zones are REFUSED.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins, in the order the Corefile's directives run (core/dnsserver's Directives).
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
