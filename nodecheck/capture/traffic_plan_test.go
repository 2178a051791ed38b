package capture

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Where the canary aims, for the shapes of intent istio-init is given: -i (all or ranges), -x, -o
// and -q, in each family.
func TestCapturedDestination(t *testing.T) {
	cidrs := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, c := range s {
			out = append(out, netip.MustParsePrefix(c))
		}
		return out
	}
	cases := []struct {
		name string
		cfg  intent.Config
		fam  rules.Family
		want string // "" when nothing captured can be reached
	}{
		{"everything captured", intent.Config{IncludeOutboundAll: true}, rules.IPv4, "192.0.2.1:80"},
		{"everything captured, ipv6", intent.Config{IncludeOutboundAll: true}, rules.IPv6, "[2001:db8::1]:80"},
		{"port 80 excluded", intent.Config{IncludeOutboundAll: true, ExcludeOutboundPorts: []string{"80"}}, rules.IPv4, "192.0.2.1:8080"},
		{"the common ports excluded", intent.Config{IncludeOutboundAll: true, ExcludeOutboundPorts: []string{"80", "8080", "443", "81"}}, rules.IPv4, "192.0.2.1:82"},
		{"one range", intent.Config{IncludeOutboundCIDRs: cidrs("10.0.0.0/8")}, rules.IPv4, "10.0.0.1:80"},
		{"one range, its first host excluded", intent.Config{IncludeOutboundCIDRs: cidrs("10.0.0.0/8"), ExcludeOutboundCIDRs: cidrs("10.0.0.1/32")}, rules.IPv4, "10.0.0.2:80"},
		{"one address", intent.Config{IncludeOutboundCIDRs: cidrs("10.96.0.10/32")}, rules.IPv4, "10.96.0.10:80"},
		{"a range excluded whole", intent.Config{IncludeOutboundCIDRs: cidrs("10.0.0.0/24"), ExcludeOutboundCIDRs: cidrs("10.0.0.0/16")}, rules.IPv4, ""},
		{"ipv4 ranges only, ipv6 asked", intent.Config{IncludeOutboundCIDRs: cidrs("10.0.0.0/8")}, rules.IPv6, ""},
		{"an ipv6 range", intent.Config{IncludeOutboundCIDRs: cidrs("10.0.0.0/8", "fd00::/8")}, rules.IPv6, "[fd00::1]:80"},
		{"only -q ports", intent.Config{IncludeOutboundPorts: []string{"3306"}}, rules.IPv4, "192.0.2.1:3306"},
		{"the documentation range excluded", intent.Config{IncludeOutboundAll: true, ExcludeOutboundCIDRs: cidrs("192.0.2.0/24")}, rules.IPv4, ""},
		{"nothing captured", intent.Config{}, rules.IPv4, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := capturedDestination(c.cfg, c.fam)
			if c.want == "" {
				if ok {
					t.Errorf("aimed at %s, want no destination", got)
				}
				return
			}
			if !ok || got.String() != c.want {
				t.Errorf("aimed at %s (%v), want %s", got, ok, c.want)
			}
		})
	}
}

// Which probes a sidecar pod gets: the captured one per family, the proxy's own user, an
// excluded port when no -q narrows capture to some ports, none when interfaces decide.
func TestSidecarCanaries(t *testing.T) {
	base := intent.Config{ProxyPort: 15001, InboundCapturePort: 15006, IncludeOutboundAll: true, ProxyUID: []string{"1337"}}
	withExcludedPort := base
	withExcludedPort.ExcludeOutboundPorts = []string{"5432"}
	onlySomePorts := withExcludedPort
	onlySomePorts.IncludeOutboundAll, onlySomePorts.IncludeOutboundPorts = false, []string{"3306"}
	noUID := base
	noUID.ProxyUID = nil
	byInterface := base
	byInterface.ExcludeInterfaces = []string{"eth1"}
	cases := []struct {
		name     string
		cfg      intent.Config
		families []rules.Family
		want     []string // dst@uid expect
	}{
		{"defaults, ipv4", base, []rules.Family{rules.IPv4},
			[]string{"192.0.2.1:80@65534 " + expectCaptured, "192.0.2.1:80@1337 " + expectBypass}},
		{"defaults, dual stack", base, []rules.Family{rules.IPv4, rules.IPv6},
			[]string{"192.0.2.1:80@65534 " + expectCaptured, "192.0.2.1:80@1337 " + expectBypass,
				"[2001:db8::1]:80@65534 " + expectCaptured, "[2001:db8::1]:80@1337 " + expectBypass}},
		{"an excluded port", withExcludedPort, []rules.Family{rules.IPv4},
			[]string{"192.0.2.1:80@65534 " + expectCaptured, "192.0.2.1:80@1337 " + expectBypass, "192.0.2.1:5432@65534 " + expectBypass}},
		{"-q narrows capture: no excluded-port probe", onlySomePorts, []rules.Family{rules.IPv4},
			[]string{"192.0.2.1:3306@65534 " + expectCaptured, "192.0.2.1:3306@1337 " + expectBypass}},
		{"the proxy's uid unknown", noUID, []rules.Family{rules.IPv4}, []string{"192.0.2.1:80@65534 " + expectCaptured}},
		{"interfaces excluded", byInterface, []rules.Family{rules.IPv4}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan, why := sidecarCanaries(c.cfg, c.families)
			var got []string
			for _, p := range plan {
				got = append(got, p.probe.Dst.String()+"@"+strconv.FormatUint(uint64(p.probe.UID), 10)+" "+p.expect)
			}
			if len(got) != len(c.want) {
				t.Fatalf("plan %q, want %q", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("probe %d: %q, want %q", i, got[i], c.want[i])
				}
			}
			if len(plan) == 0 && why == "" {
				t.Error("no probe planned and no reason given")
			}
		})
	}
}

// Where the inbound canary aims and why it is not sent, for the shapes of intent istio-init is
// given (-b all or a list, -d, TPROXY) and what the node and runtime provide.
func TestSidecarInboundCanary(t *testing.T) {
	base := intent.Config{Mode: "REDIRECT", IncludeInboundPorts: "*", ExcludeInboundPorts: []string{"15090", "15021", "15020"},
		InboundCapturePort: 15006, InboundTunnelPort: 15008, ProxyPort: 15001}
	with := func(f func(*intent.Config)) intent.Config { c := base; f(&c); return c }
	v4, both := []rules.Family{rules.IPv4}, []rules.Family{rules.IPv4, rules.IPv6}
	cases := []struct {
		name     string
		cfg      intent.Config
		podIP    string
		families []rules.Family
		node     string
		want     string // the probe's destination, or text of why none
	}{
		{"every port captured", base, "10.244.1.7", v4, "/proc/1/ns/net", "10.244.1.7:80"},
		{"port 80 excluded", with(func(c *intent.Config) { c.ExcludeInboundPorts = append(c.ExcludeInboundPorts, "80") }), "10.244.1.7", v4, "/n", "10.244.1.7:8080"},
		{"a port list", with(func(c *intent.Config) { c.IncludeInboundPorts = "15006,9080" }), "10.244.1.7", v4, "/n", "10.244.1.7:9080"},
		{"a list of excluded ports only", with(func(c *intent.Config) { c.IncludeInboundPorts = "15020" }), "10.244.1.7", v4, "/n", "no inbound port"},
		{"ipv6 pod", base, "fd00:10:244::7", both, "/n", "[fd00:10:244::7]:80"},
		{"ipv6 pod, ipv6 not captured", base, "fd00:10:244::7", v4, "/n", "ipv6 capture is not meant"},
		{"a mapped address", base, "::ffff:10.244.1.7", v4, "/n", "10.244.1.7:80"},
		{"tproxy", with(func(c *intent.Config) { c.Mode = "TPROXY" }), "10.244.1.7", v4, "/n", "TPROXY"},
		{"no node netns", base, "10.244.1.7", v4, "", "no node network namespace"},
		{"no pod IP", base, "", v4, "/n", "no pod IP"},
		{"a pod IP that is not one", base, "10.244.1", v4, "/n", "not an address"},
		{"inbound not captured", with(func(c *intent.Config) { c.IncludeInboundPorts = "" }), "10.244.1.7", v4, "/n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, why := sidecarInboundCanary(c.cfg, c.podIP, c.families, c.node)
			got := why
			if p.inbound {
				got = p.probe.Dst.String()
				if p.redirectTo.Port() != 15006 || p.redirectTo.Addr() != p.probe.Dst.Addr() {
					t.Errorf("expects a redirect to %s", p.redirectTo)
				}
			}
			if c.want == "" && got != "" || !strings.Contains(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}
