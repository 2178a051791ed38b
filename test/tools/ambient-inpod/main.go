// Command ambient-inpod writes Istio ambient mode's in-pod capture rules into the network
// namespace it runs in, with Istio's own code (istio.io/istio cni/pkg/trafficmanager, what the
// istio-cni node agent runs when it enrols a pod), so the test bed can make real ambient pods
// without a Kubernetes API server. By default the rules are iptables rules (cni/pkg/iptables);
// --native-nftables selects istio-cni's native nftables writer (cni/pkg/nftables, the agent's
// NativeNftables setting), which writes the tables inet istio-ambient-nat, -mangle and -raw.
// Run it inside the pod's network namespace:
//
//	nsenter --net=/var/run/netns/cni-… ambient-inpod --netns /var/run/netns/cni-… [--native-nftables] [--dns=false] [--ingress]
//
// With --host it writes the node's side instead, in the namespace it runs in (which stands for the
// node: Istio's code switches to the host only when ALLOW_SWITCH_TO_HOST_NS is set, and this tool
// refuses to run then): the rule that SNATs kubelet's probes to 169.254.7.127, and the probe
// address set (ipset istio-inpod-probes-v4/-v6, or its nftables set) holding --probe-ips, as the
// agent adds an enrolled pod's addresses. In native nftables mode the host rule matches kubelet's
// probes by kubelet's UID, which Istio's code finds in /host/proc; the tool gives it one for the
// run (a stand-in process named kubelet, as --kubelet-uid, and /host/proc in a private mount
// namespace: see hostroot.go).
//
// It is a module of its own so that meshdoctor itself never depends on istio.io/istio.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"istio.io/istio/cni/pkg/addressset"
	"istio.io/istio/cni/pkg/config"
	"istio.io/istio/cni/pkg/iptables"
	"istio.io/istio/cni/pkg/scopes"
	"istio.io/istio/cni/pkg/trafficmanager"
	dep "istio.io/istio/tools/istio-iptables/pkg/dependencies"
)

func main() {
	if os.Getenv(envKubeletStandIn) != "" {
		runKubeletStandIn()
	}
	netns := flag.String("netns", "", "path of the network namespace this runs in (the agent's pod-scoped xtables lock)")
	ipv6 := flag.Bool("ipv6", true, "istio-cni's ENABLE_INBOUND_IPV6 (its default is on)")
	dns := flag.Bool("dns", true, "istio-cni's REDIRECT_DNS (ambient.dnsCapture, on by default)")
	ingress := flag.Bool("ingress", false, "the pod's ambient.istio.io/bypass-inbound-capture")
	virt := flag.String("virtual-interfaces", "", "the pod's istio.io/reroute-virtual-interfaces")
	native := flag.Bool("native-nftables", false, "istio-cni's NATIVE_NFTABLES (values.global.nativeNftables): write nftables tables, not iptables rules")
	host := flag.Bool("host", false, "write istio-cni's node-side rules and probe set in this netns instead of in-pod rules")
	probeIPs := flag.String("probe-ips", "", "with --host: comma-separated pod addresses to add to the probe set")
	podUID := flag.String("pod-uid", "test-pod-uid", "with --host: the pod UID the agent comments each probe set entry with")
	kubeletUID := flag.Int("kubelet-uid", 0, "with --host --native-nftables: the UID of the kubelet stand-in, which the host rule matches")
	flag.Parse()
	if allow, _ := strconv.ParseBool(os.Getenv("ALLOW_SWITCH_TO_HOST_NS")); allow {
		fail(fmt.Errorf("ALLOW_SWITCH_TO_HOST_NS is set: Istio's code would write into the real host's netns"))
	}
	if *host && *native {
		root := os.Getenv(envHostRoot)
		if root == "" {
			if err := runWithHostRoot(*kubeletUID); err != nil {
				fail(err)
			}
			return
		}
		if err := enterHostRoot(root); err != nil {
			fail(err)
		}
	}

	cfg := &config.AmbientConfig{
		EnableIPv6:             *ipv6,
		RedirectDNS:            *dns,
		HostProbeSNATAddress:   netip.MustParseAddr("169.254.7.127"),
		HostProbeV6SNATAddress: netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff"),
	}
	// The agent builds its rule writers through the traffic manager, which picks iptables or
	// nftables from one setting; the dependencies only matter to the iptables writer.
	hostRules, inPod, err := trafficmanager.NewTrafficRuleManager(&trafficmanager.TrafficRuleManagerConfig{
		NativeNftables: *native,
		HostConfig:     cfg,
		PodConfig:      cfg,
		HostDeps:       &dep.RealDependencies{},
		PodDeps:        &dep.RealDependencies{UsePodScopedXtablesLock: *netns != "", NetworkNamespace: *netns},
		NlDeps:         iptables.RealNlDeps(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambient-inpod:", err)
		os.Exit(1)
	}
	if *host {
		// The agent makes the set first: the host rule names it.
		set, err := addressset.New(*native, *ipv6)
		if err != nil {
			fail(err)
		}
		if err := hostRules.CreateHostRulesForHealthChecks(); err != nil {
			fail(err)
		}
		for _, s := range strings.Split(*probeIPs, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				fail(err)
			}
			if err := set.AddIP(ip, uint8(unix.IPPROTO_TCP), *podUID, true); err != nil {
				fail(err)
			}
		}
		return
	}
	overrides := config.PodLevelOverrides{IngressMode: *ingress, DNSProxy: config.PodDNSUnset}
	for _, v := range strings.Split(*virt, ",") {
		if v = strings.TrimSpace(v); v != "" {
			overrides.VirtualInterfaces = append(overrides.VirtualInterfaces, v)
		}
	}
	if err := inPod.CreateInpodRules(scopes.CNIAgent, overrides); err != nil {
		fmt.Fprintln(os.Stderr, "ambient-inpod:", err)
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ambient-inpod:", err)
	os.Exit(1)
}
