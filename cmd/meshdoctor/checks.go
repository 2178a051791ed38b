package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istioinit"
	"github.com/meshdoctor/meshdoctor/nodecheck/netfilter"
	"github.com/meshdoctor/meshdoctor/nodecheck/proxyready"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/nodecheck/socketlb"
)

// registerNodeFlags registers the flags `check` and `agent` share: which node, where its files
// are, how its pods are found, and every check's own flags.
func (o *checkOptions) registerNodeFlags(f *pflag.FlagSet) {
	f.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "node name for the report (default $NODE_NAME, else the hostname)")
	f.StringVar(&o.hostRoot, "host-root", "/", "where the node's filesystem is seen (the DaemonSet mounts the host's / under a prefix)")
	f.StringVar(&o.nodeBackend, "node-backend", "auto",
		"iptables backend the node uses (nft, legacy, none); auto reads the host network namespace's rules")
	f.StringVar(&o.nodeNetns, "node-netns", "",
		"the node's network namespace, where --node-backend=auto reads the host's rules and the inbound traffic canary is sent "+
			"from (default <host-root>/proc/1/ns/net; "+
			"/proc/self/ns/net when meshdoctor runs in the host network, which needs no ptrace access to PID 1)")
	o.netnsOptions.register(f)
	addDiscoveryFlags(f, &o.discovery)
	o.node.register(f)
	o.proxyReady.register(f)
	f.BoolVar(&o.trafficCanary, "traffic-canary", true,
		"prove the capture by traffic where the rules verify: one TCP SYN per family from a raw socket inside the pod's "+
			"netns (TTL 1, never a handshake), judged by the conntrack entry it makes, which is then deleted; for sidecar "+
			"REDIRECT pods also one SYN from the node's netns (--node-netns) to the pod's IP on a captured inbound port; "+
			"needs CAP_NET_RAW, CAP_NET_ADMIN, CAP_SETUID and CAP_SETGID")
	f.BoolVar(&o.socketLB, "socket-lb", true,
		"warn when BPF programs at connect/sendmsg (Cilium socket LB, Calico connect-time load balancing) are effective on a pod's "+
			"cgroup: they rewrite ClusterIPs before Istio's rules see them; read-only (BPF_PROG_QUERY), needs CAP_SYS_ADMIN and the "+
			"node's cgroup2 hierarchy")
}

// podChecks builds every pod check, the one place `check` and `agent` get them from. conditions
// are the node conditions pod checks link their findings with; reader reads the pods' rules (and
// istio-cni's node side), a caching one for the agent, which reads every pod again and again.
func (o *checkOptions) podChecks(ctx context.Context, conditions proxyready.NodeConditions, reader nsread.Reader, log *slog.Logger) ([]nodecheck.Check, error) {
	backend, err := resolveNodeBackend(ctx, *o, log)
	if err != nil {
		return nil, err
	}
	log.Debug("node iptables backend", "backend", backend)
	proxyReady, err := o.proxyReady.check(o.node.path(o.node.podLogDir, o.hostRoot, "var/log/pods"), conditions)
	if err != nil {
		return nil, err
	}
	capt := &capture.Check{Reader: reader, NodeBackend: backend, Kernel: netfilter.Reader{HostRoot: o.hostRoot},
		Readiness: proxyready.Readiness{Prober: proxyready.NetnsProber{Timeout: o.proxyReady.probeTimeout}}}
	// Every ambient pod of a sweep is judged against one reading of istio-cni's node side.
	capt.AmbientHost = &ambienthost.Cached{Reader: ambienthost.Reader{NodeNetns: o.nodeNetnsPath(), Rules: reader}, TTL: 5 * time.Second}
	if o.trafficCanary {
		capt.Traffic, capt.NodeNetns = canary.Prober{}, o.nodeNetnsPath()
	}
	checks := []nodecheck.Check{capt, istioinit.Check{}, proxyReady}
	if o.socketLB {
		checks = append(checks, socketlb.Check{})
	}
	return checks, nil
}
