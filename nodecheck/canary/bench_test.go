package canary_test

import (
	"net/netip"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// The canary's cost beside the rule read it completes, in the same dual-stack sidecar namespace
// with a proxy's stand-in listening (and a node netns in front, for the inbound probe): compare ns/op of the sub-benchmarks (the goal is at most
// 0.5 ms of CPU per pod and family for the canary).
func BenchmarkCanaryBesideRuleRead(b *testing.B) {
	testbed.RequirePrivileged(b)
	ctx := b.Context()
	n := testbed.NewNetns(b)
	if err := n.IstioIptables(ctx, append(testbed.DefaultSidecarArgs(), "--dual-stack")...); err != nil {
		b.Fatal(err)
	}
	testbed.ListenCounting(b, n.Path(), 15001)
	testbed.ListenCounting(b, n.Path(), 15006)
	node := n.NodeInFront(b)
	b.Run("rule-read", func(b *testing.B) {
		for b.Loop() {
			if _, err := (nsread.Reader{}).ReadRules(ctx, n.Path()); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		name   string
		probes []canary.Probe
	}{
		{"canary-ipv4", []canary.Probe{{Dst: v4Dst, UID: 65534, GID: 65534}}},
		{"canary-ipv4+ipv6", []canary.Probe{{Dst: v4Dst, UID: 65534, GID: 65534}, {Dst: v6Dst, UID: 65534, GID: 65534}}},
		{"canary-ipv4+ipv6+proxy-uid", []canary.Probe{{Dst: v4Dst, UID: 65534, GID: 65534}, {Dst: v6Dst, UID: 65534, GID: 65534}, {Dst: v4Dst, UID: 1337, GID: 65534}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := (canary.Prober{}).Run(ctx, n.Path(), c.probes); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("inbound-ipv4-from-node", func(b *testing.B) {
		probes := []canary.Probe{{Dst: netip.AddrPortFrom(n.IPv4.Addr(), 8080), UID: 65534, GID: 65534}}
		for b.Loop() {
			out, err := (canary.Prober{}).RunInbound(ctx, node.Path(), n.Path(), probes)
			if err != nil || out[0].Err != nil || !out[0].Redirected() {
				b.Fatalf("%v %+v", err, out)
			}
		}
	})
}
