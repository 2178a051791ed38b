package main

import (
	"context"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// scenario is one pod capture to record: how the namespace looks, what istio-init is given,
// and optionally how the result is broken afterwards.
type scenario struct {
	name        string
	description string
	netns       []testbed.Option
	// annotations are the pod annotations that make the injector produce env and args: what
	// meshdoctor's `check --annotations` is handed for this pod. Mesh-wide or node-wide
	// choices (native nftables, the legacy backend) have no annotation.
	annotations map[string]string
	env         []string // proxyMetadata that reaches istio-init as environment
	args        []string // after `pilot-agent istio-iptables`; nil runs nothing
	extraRuns   [][]string
	breakRules  func(context.Context, *testbed.Netns) error
}

// sidecarArgs returns the default istio-init arguments with some flag values replaced and
// optional flags appended in the injector's order, before --log_output_level.
func sidecarArgs(replace map[string]string, optional ...string) []string {
	args := testbed.DefaultSidecarArgs()
	for i := 0; i+1 < len(args); i += 2 {
		if v, ok := replace[args[i]]; ok {
			args[i+1] = v
		}
	}
	logFlag := args[len(args)-1]
	return append(append(args[:len(args)-1], optional...), logFlag)
}

func dualStackConfig(extra string) map[string]string {
	return map[string]string{"proxy.istio.io/config": `{"proxyMetadata":{"ISTIO_DUAL_STACK":"true"` + extra + `}}`}
}

func scenarios() []scenario {
	v4 := []testbed.Option{testbed.IPv4Only()}
	return []scenario{
		{
			name:        "empty",
			description: "fresh pod namespace, istio-init never ran (nothing captured)",
			netns:       v4,
		},
		{
			name:        "sidecar-default",
			description: "istio-init with injector defaults; pilot-agent picks iptables-nft by itself",
			netns:       v4,
			args:        testbed.DefaultSidecarArgs(),
		},
		{
			name:        "sidecar-legacy",
			description: "defaults with --force-iptables-binary legacy (rules in iptables-legacy)",
			netns:       v4,
			args:        append(testbed.DefaultSidecarArgs(), "--force-iptables-binary", "legacy"),
		},
		{
			name:        "sidecar-native-nftables",
			description: "defaults with --native-nftables (values.global.nativeNftables=true)",
			netns:       v4,
			args:        append(testbed.DefaultSidecarArgs(), "--native-nftables"),
		},
		{
			name:        "sidecar-tproxy",
			description: "sidecar.istio.io/interceptionMode: TPROXY (mangle rules, ip rule + table 133)",
			netns:       v4,
			annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"},
			args:        sidecarArgs(map[string]string{"-m": "TPROXY"}),
		},
		{
			name:        "sidecar-custom-ports",
			description: "inbound ports 8080,9090 only; outbound excludes CIDRs and ports 3306,5432; includes port 8443",
			netns:       v4,
			annotations: map[string]string{
				"traffic.sidecar.istio.io/includeInboundPorts":     "8080,9090",
				"traffic.sidecar.istio.io/excludeInboundPorts":     "9091",
				"traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32,10.10.0.0/16",
				"traffic.sidecar.istio.io/includeOutboundPorts":    "8443",
				"traffic.sidecar.istio.io/excludeOutboundPorts":    "3306,5432",
			},
			args: sidecarArgs(map[string]string{
				"-x": "169.254.169.254/32,10.10.0.0/16",
				"-b": "8080,9090",
				"-d": "15090,15021,9091,15020",
			}, "-q", "8443", "-o", "3306,5432"),
		},
		{
			name:        "sidecar-include-cidrs",
			description: "outbound capture limited to two CIDRs, no inbound capture, interface net1 excluded",
			netns:       v4,
			annotations: map[string]string{
				"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12,10.244.0.0/16",
				"traffic.sidecar.istio.io/includeInboundPorts":     "",
				"traffic.sidecar.istio.io/excludeInterfaces":       "net1",
			},
			args: sidecarArgs(map[string]string{
				"-i": "10.96.0.0/12,10.244.0.0/16",
				"-b": "",
			}, "-c", "net1"),
		},
		{
			name:        "sidecar-dns-capture",
			description: "proxyMetadata ISTIO_META_DNS_CAPTURE=true; resolv.conf nameserver " + testbed.DefaultNameserver,
			netns:       v4,
			annotations: map[string]string{"proxy.istio.io/config": `{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"true"}}`},
			env:         []string{"ISTIO_META_DNS_CAPTURE=true"},
			args:        testbed.DefaultSidecarArgs(),
		},
		{
			name:        "sidecar-dual-stack",
			description: "dual-stack pod with proxyMetadata ISTIO_DUAL_STACK=true: IPv4 and IPv6 rules (iptables-nft)",
			annotations: dualStackConfig(""),
			env:         []string{"ISTIO_DUAL_STACK=true"},
			args:        testbed.DefaultSidecarArgs(),
		},
		{
			name:        "sidecar-dual-stack-no-flag",
			description: "dual-stack pod without ISTIO_DUAL_STACK: Istio sees the IPv4 address first and writes IPv4 rules only",
			args:        testbed.DefaultSidecarArgs(),
		},
		{
			name:        "sidecar-dual-stack-legacy",
			description: "dual-stack with ISTIO_DUAL_STACK=true and --force-iptables-binary legacy",
			annotations: dualStackConfig(""),
			env:         []string{"ISTIO_DUAL_STACK=true"},
			args:        append(testbed.DefaultSidecarArgs(), "--force-iptables-binary", "legacy"),
		},
		{
			name:        "sidecar-dual-stack-native-nftables",
			description: "dual-stack with ISTIO_DUAL_STACK=true and --native-nftables (one inet table for both families)",
			annotations: dualStackConfig(""),
			env:         []string{"ISTIO_DUAL_STACK=true"},
			args:        append(testbed.DefaultSidecarArgs(), "--native-nftables"),
		},
		{
			name:        "sidecar-ipv6-only",
			description: "IPv6-only pod: Istio detects IPv6 from the address and writes both families",
			netns:       []testbed.Option{testbed.IPv6Only()},
			args:        testbed.DefaultSidecarArgs(),
		},
		{
			name:        "mixed-nft-and-legacy",
			description: "two writers: defaults in iptables-nft, then again with --force-iptables-binary legacy",
			netns:       v4,
			args:        testbed.DefaultSidecarArgs(),
			extraRuns:   [][]string{append(testbed.DefaultSidecarArgs(), "--force-iptables-binary", "legacy")},
		},
		{
			name:        "broken-output-flushed",
			description: "sidecar-default, then nat ISTIO_OUTPUT flushed (iptables-nft -t nat -F ISTIO_OUTPUT)",
			netns:       v4,
			args:        testbed.DefaultSidecarArgs(),
			breakRules: func(ctx context.Context, ns *testbed.Netns) error {
				return ns.FlushChain(ctx, testbed.Nft, testbed.IPv4, "nat", "ISTIO_OUTPUT")
			},
		},
		{
			name:        "broken-inbound-jump-deleted",
			description: "sidecar-legacy, then the PREROUTING jump to ISTIO_INBOUND deleted (iptables-legacy)",
			netns:       v4,
			args:        append(testbed.DefaultSidecarArgs(), "--force-iptables-binary", "legacy"),
			breakRules: func(ctx context.Context, ns *testbed.Netns) error {
				return ns.DeleteRule(ctx, testbed.Legacy, testbed.IPv4, "nat", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
			},
		},
		{
			name:        "broken-redirect-port",
			description: "sidecar-default, then ISTIO_REDIRECT and ISTIO_IN_REDIRECT pointed at port 15999",
			netns:       v4,
			args:        testbed.DefaultSidecarArgs(),
			breakRules: func(ctx context.Context, ns *testbed.Netns) error {
				for _, chain := range []string{"ISTIO_REDIRECT", "ISTIO_IN_REDIRECT"} {
					if err := ns.RedirectTo(ctx, testbed.Nft, testbed.IPv4, chain, 15999); err != nil {
						return err
					}
				}
				return nil
			},
		},
		{
			name:        "broken-native-nftables-output-flushed",
			description: "sidecar-native-nftables, then chain output of table inet istio-proxy-nat flushed",
			netns:       v4,
			args:        append(testbed.DefaultSidecarArgs(), "--native-nftables"),
			breakRules: func(ctx context.Context, ns *testbed.Netns) error {
				_, err := ns.Nft(ctx, "flush", "chain", "inet", "istio-proxy-nat", "output")
				return err
			},
		},
	}
}
