package canary_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

var (
	v4Dst = netip.MustParseAddrPort("192.0.2.1:80")
	v6Dst = netip.MustParseAddrPort("[2001:db8::1]:80")
	v4Lo  = netip.MustParseAddrPort("127.0.0.1:15001")
	v6Lo  = netip.MustParseAddrPort("[::1]:15001")
)

// What becomes of a SYN in real namespaces whose rules Istio's own pilot-agent wrote, in every
// backend, with and without a proxy listening where the rules redirect, and once a rule that is
// not Istio's defeats the capture: the app's SYN is redirected to 15001, the proxy's own (uid
// 1337) is not, and a defeated capture shows as untracked or not redirected.
func TestProbesOnIstiosRules(t *testing.T) {
	testbed.RequirePrivileged(t)
	sidecar := testbed.DefaultSidecarArgs()
	tproxy := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}
	type want struct {
		app, proxy string // "redirected", "not redirected", "untracked"
	}
	captured := want{app: "redirected", proxy: "not redirected"}
	cases := []struct {
		name     string
		args     []string
		listen   bool
		defeat   func(ctx context.Context, n *testbed.Netns) error
		want     want
		wantPort uint16 // where the app's SYN went, when not 15001
	}{
		{name: "iptables-nft", args: sidecar, want: captured},
		{name: "iptables-nft, proxy listening", args: sidecar, listen: true, want: captured},
		{name: "iptables-legacy", args: append(sidecar, "--force-iptables-binary", "legacy"), want: captured},
		{name: "native nftables, proxy listening", args: append(sidecar, "--native-nftables"), listen: true, want: captured},
		{name: "tproxy", args: tproxy, listen: true, want: captured},
		{name: "dual-stack", args: append(sidecar, "--dual-stack"), listen: true, want: captured},
		{name: "no rules at all", want: want{app: "untracked", proxy: "untracked"}},
		{name: "nft table of another owner: notrack before Istio's nat", args: sidecar, listen: true,
			defeat: nftScript("table inet other {\n chain out {\n  type filter hook output priority raw\n  meta l4proto tcp notrack\n }\n}"),
			want:   want{app: "untracked", proxy: "untracked"}},
		{name: "legacy raw table NOTRACK beside iptables-nft rules", args: sidecar,
			defeat: func(ctx context.Context, n *testbed.Netns) error {
				return n.Iptables(ctx, testbed.Legacy, testbed.IPv4, "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "NOTRACK")
			},
			want: want{app: "untracked", proxy: "untracked"}},
		{name: "nat chain of another owner ahead of Istio's: redirect elsewhere", args: sidecar,
			defeat: nftScript("table ip other {\n chain out {\n  type nat hook output priority -110\n  tcp dport 80 redirect to :15999\n }\n}"),
			want:   want{app: "redirected", proxy: "redirected"}, wantPort: 15999},
		{name: "nat chain of another owner ahead of Istio's: dnat to itself", args: sidecar,
			defeat: nftScript("table ip other {\n chain out {\n  type nat hook output priority -110\n  tcp dport 80 dnat to 192.0.2.1\n }\n}"),
			want:   want{app: "not redirected", proxy: "not redirected"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			n := testbed.NewNetns(t)
			if c.args != nil {
				if err := n.IstioIptables(ctx, c.args...); err != nil {
					t.Fatal(err)
				}
			}
			if c.defeat != nil {
				if err := c.defeat(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			var ln *testbed.CountingListener
			if c.listen {
				ln = testbed.ListenCounting(t, n.Path(), 15001)
			}
			dual := strings.Contains(c.name, "dual-stack")
			probes := []canary.Probe{{Dst: v4Dst, UID: 65534, GID: 65534}, {Dst: v4Dst, UID: 1337, GID: 65534}}
			if dual {
				probes = append(probes, canary.Probe{Dst: v6Dst, UID: 65534, GID: 65534}, canary.Probe{Dst: v6Dst, UID: 1337, GID: 65534})
			}
			before, err := n.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out, err := canary.Prober{}.Run(ctx, n.Path(), probes)
			if err != nil {
				t.Fatal(err)
			}
			for i, o := range out {
				t.Log(o)
				if o.Err != nil {
					t.Fatalf("probe %d: %v", i, o.Err)
				}
				wantKind, port := c.want.app, c.wantPort
				if o.Probe.UID == 1337 {
					wantKind = c.want.proxy
				}
				if port == 0 {
					port = 15001
				}
				if got := kind(o); got != wantKind {
					t.Errorf("%s: %s, want %s", o.Probe.Dst, got, wantKind)
				}
				if wantKind == "redirected" && o.ReplySrc.Port() != port {
					t.Errorf("%s went to %s, want port %d", o.Probe.Dst, o.ReplySrc, port)
				}
				if wantKind == "redirected" && port == 15001 {
					lo := v4Lo
					if o.Probe.Dst.Addr().Is6() {
						lo = v6Lo
					}
					if o.ReplySrc != lo {
						t.Errorf("%s went to %s, want %s", o.Probe.Dst, o.ReplySrc, lo)
					}
					// Conntrack forgets a connection answered only by a reset; one a listener
					// answered stays until the probe deletes it.
					if o.Gone == c.listen {
						t.Errorf("gone %v with a listener %v", o.Gone, c.listen)
					}
				}
			}
			after, err := n.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(after); d != "" {
				t.Errorf("the probes left a trace:\n%s", d)
			}
			if ln != nil && ln.Accepted() != 0 {
				t.Errorf("the proxy's stand-in accepted %d connections", ln.Accepted())
			}
		})
	}
}

func kind(o canary.Outcome) string {
	switch {
	case !o.Tracked:
		return "untracked"
	case o.Redirected():
		return "redirected"
	}
	return "not redirected"
}

func nftScript(script string) func(ctx context.Context, n *testbed.Netns) error {
	return func(ctx context.Context, n *testbed.Netns) error { return n.NftScript(ctx, script) }
}

// A thousand rounds of probes against a proxy's stand-in listening where Istio's rules
// redirect: it accepts nothing, and the namespace's rules, tables, sockets and conntrack are
// exactly what they were.
func TestProbesCompleteNoHandshakeAndLeaveNoTrace(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx := t.Context()
	n := testbed.NewNetns(t)
	if err := n.IstioIptables(ctx, append(testbed.DefaultSidecarArgs(), "--dual-stack")...); err != nil {
		t.Fatal(err)
	}
	ln := testbed.ListenCounting(t, n.Path(), 15001)
	before, err := n.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	probes := []canary.Probe{{Dst: v4Dst, UID: 65534, GID: 65534}, {Dst: v6Dst, UID: 65534, GID: 65534}, {Dst: v4Dst, UID: 1337, GID: 1337}}
	const rounds = 1000
	redirected := 0
	for range rounds {
		out, err := canary.Prober{}.Run(ctx, n.Path(), probes)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			if o.Redirected() {
				redirected++
			}
		}
	}
	if redirected != 2*rounds {
		t.Errorf("%d probes redirected, want %d", redirected, 2*rounds)
	}
	after, err := n.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); d != "" {
		t.Errorf("the probes left a trace:\n%s", d)
	}
	if ln.Accepted() != 0 {
		t.Errorf("the proxy's stand-in accepted %d connections in %d rounds", ln.Accepted(), rounds)
	}
}

// Probes to a family without a route, and in a namespace that vanished, fail with an error that
// says so: nothing panics, nothing is taken for a verdict.
func TestProbeErrors(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx := t.Context()
	n := testbed.NewNetns(t, testbed.IPv4Only())
	out, err := canary.Prober{}.Run(ctx, n.Path(), []canary.Probe{{Dst: v6Dst, UID: 65534, GID: 65534}})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Err == nil || !strings.Contains(out[0].Err.Error(), "no route") {
		t.Errorf("IPv6 probe in an IPv4-only namespace: %v", out[0].Err)
	}
	if _, err := (canary.Prober{}).Run(ctx, "/var/run/netns/md-gone-away", []canary.Probe{{Dst: v4Dst}}); err == nil {
		t.Error("a namespace that does not exist was probed")
	}
}
