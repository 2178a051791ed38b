package capture

import (
	"net/netip"
	"strconv"
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
