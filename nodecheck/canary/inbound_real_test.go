package canary_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// What becomes of a SYN the node sends to a pod whose rules Istio's own pilot-agent wrote, the
// pod wired to a node namespace by a veth as a CNI wires it: a captured port is redirected to the
// proxy's 15006 on the pod's address, an excluded one is not, a rule that is not Istio's untracks
// it; the node hears the pod's answer. The proxy's stand-in on 15006 accepts nothing, and neither
// namespace keeps a trace.
func TestInboundProbesFromTheNode(t *testing.T) {
	testbed.RequirePrivileged(t)
	sidecar := testbed.DefaultSidecarArgs()
	cases := []struct {
		name   string
		args   []string
		defeat func(ctx context.Context, n *testbed.Netns) error
		listen bool
		// nodeConntrack: the node's netns tracks connections too (as kube-proxy's node does),
		// so the probe makes an entry there that it must delete.
		nodeConntrack bool
		port          uint16
		want          string // "redirected", "not redirected", "untracked"
		answers       canary.Answer
	}{
		{name: "iptables-nft, proxy listening", args: sidecar, listen: true, port: 8080, want: "redirected", answers: canary.AnswerSynAck},
		{name: "iptables-nft, proxy listening, node tracking connections", args: sidecar, listen: true, nodeConntrack: true, port: 8080, want: "redirected", answers: canary.AnswerSynAck},
		{name: "iptables-nft, nothing on 15006", args: sidecar, port: 8080, want: "redirected", answers: canary.AnswerReset},
		{name: "iptables-legacy", args: append(slices.Clone(sidecar), "--force-iptables-binary", "legacy"), listen: true, port: 8080, want: "redirected", answers: canary.AnswerSynAck},
		{name: "native nftables, dual-stack", args: append(slices.Clone(sidecar), "--native-nftables", "--dual-stack"), listen: true, port: 8080, want: "redirected", answers: canary.AnswerSynAck},
		{name: "an excluded inbound port", args: sidecar, listen: true, port: 15020, want: "not redirected", answers: canary.AnswerReset},
		{name: "only port 9080 captured", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "9080", "-d", ""},
			listen: true, port: 8080, want: "not redirected", answers: canary.AnswerReset},
		{name: "another owner untracks inbound TCP", args: sidecar, listen: true, port: 8080,
			defeat: nftScript("table inet other {\n chain pre {\n  type filter hook prerouting priority raw\n  meta l4proto tcp notrack\n }\n}"),
			want:   "untracked", answers: canary.AnswerReset},
		{name: "no rules at all", port: 8080, want: "untracked", answers: canary.AnswerReset},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			pod := testbed.NewNetns(t)
			node := pod.NodeInFront(t)
			if c.args != nil {
				if err := pod.IstioIptables(ctx, c.args...); err != nil {
					t.Fatal(err)
				}
			}
			if c.defeat != nil {
				if err := c.defeat(ctx, pod); err != nil {
					t.Fatal(err)
				}
			}
			if c.nodeConntrack {
				if err := node.NftScript(ctx, "table inet node {\n chain out {\n  type filter hook output priority 0\n  ct state new counter accept\n }\n}"); err != nil {
					t.Fatal(err)
				}
			}
			var ln *testbed.CountingListener
			if c.listen {
				ln = testbed.ListenCounting(t, pod.Path(), 15006)
			}
			probes := []canary.Probe{{Dst: netip.AddrPortFrom(pod.IPv4.Addr(), c.port), UID: 65534, GID: 65534}}
			if strings.Contains(c.name, "dual-stack") {
				probes = append(probes, canary.Probe{Dst: netip.AddrPortFrom(pod.IPv6.Addr(), c.port), UID: 65534, GID: 65534})
			}
			pod.Unchanged(ctx, t, "the pod's netns", func() {
				node.Unchanged(ctx, t, "the node's netns", func() {
					out, err := canary.Prober{}.RunInbound(ctx, node.Path(), pod.Path(), probes)
					if err != nil {
						t.Fatal(err)
					}
					for _, o := range out {
						t.Log(o)
						if o.Err != nil {
							t.Fatalf("%s: %v", o.Probe.Dst, o.Err)
						}
						if got := kind(o); got != c.want {
							t.Errorf("%s: %s, want %s", o.Probe.Dst, got, c.want)
						}
						if c.want == "redirected" && o.ReplySrc != netip.AddrPortFrom(o.Probe.Dst.Addr(), 15006) {
							t.Errorf("%s went to %s, want the pod's address and 15006", o.Probe.Dst, o.ReplySrc)
						}
						if o.Answer != c.answers {
							t.Errorf("%s: answered by %q, want %q", o.Probe.Dst, o.Answer, c.answers)
						}
					}
				})
			})
			if ln != nil && ln.Accepted() != 0 {
				t.Errorf("the proxy's stand-in accepted %d connections", ln.Accepted())
			}
		})
	}
}

// A node that reaches the pod only through a gateway, or not at all, sends nothing: the probe
// says why, and a namespace that vanished is an error.
func TestInboundProbeNotSent(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx := t.Context()
	pod := testbed.NewNetns(t, testbed.IPv4Only())
	node := pod.NodeInFront(t)
	gatewayed := netip.MustParseAddr("198.51.100.7")
	if _, err := node.Exec(ctx, "ip", "route", "add", gatewayed.String()+"/32", "via", pod.IPv4.Addr().String()); err != nil {
		t.Fatal(err)
	}
	probes := []canary.Probe{
		{Dst: netip.AddrPortFrom(gatewayed, 80), UID: 65534, GID: 65534},
		{Dst: netip.MustParseAddrPort("[2001:db8::7]:80"), UID: 65534, GID: 65534},
		{Dst: netip.AddrPortFrom(testbed.NodeGatewayV4, 80), UID: 65534, GID: 65534},
	}
	wants := []string{"through the gateway", "no route", "address of the node's own"}
	out, err := canary.Prober{}.RunInbound(ctx, node.Path(), pod.Path(), probes)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if o.Err == nil || !strings.Contains(o.Err.Error(), wants[i]) {
			t.Errorf("%s: %v, want an error saying %q", o.Probe.Dst, o.Err, wants[i])
		}
	}
	if _, err := (canary.Prober{}).RunInbound(ctx, node.Path(), "/var/run/netns/md-gone-away", probes[:1]); err == nil {
		t.Error("a pod namespace that does not exist was probed")
	}
}
