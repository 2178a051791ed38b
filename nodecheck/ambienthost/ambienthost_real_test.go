package ambienthost_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// A node netns whose side istio-cni's own code wrote (ambient-inpod --host, in iptables or native
// nftables mode), read back: which form exists, each family's set and its members, the SNAT rule.
// Reading changes nothing in the namespace: no table, set or rule appears.
func TestReadNodeSide(t *testing.T) {
	testbed.RequirePrivileged(t)
	writer := testbed.AmbientInpod(t)
	pod := netip.MustParseAddr("10.9.8.7")
	pod6 := netip.MustParseAddr("fd00:9::7")
	type want struct {
		found          bool
		v4, v6         []netip.Addr
		v4Rule, v6Rule bool
	}
	cases := []struct {
		name     string
		args     []string // ambient-inpod's flags; nil writes nothing
		after    []string // then this nft command
		ipt, nft want     // what each form reads as
	}{
		{name: "nothing written"},
		{name: "iptables mode", args: []string{"--host", "--probe-ips", pod.String() + "," + pod6.String()},
			ipt: want{found: true, v4: []netip.Addr{pod}, v6: []netip.Addr{pod6}, v4Rule: true, v6Rule: true}},
		{name: "native nftables mode", args: []string{"--host", "--native-nftables", "--probe-ips", pod.String() + "," + pod6.String()},
			nft: want{found: true, v4: []netip.Addr{pod}, v6: []netip.Addr{pod6}, v4Rule: true, v6Rule: true}},
		{name: "native nftables mode without IPv6", args: []string{"--host", "--native-nftables", "--ipv6=false", "--probe-ips", pod.String()},
			nft: want{found: true, v4: []netip.Addr{pod}, v4Rule: true}},
		{name: "native nftables mode, chain flushed", args: []string{"--host", "--native-nftables", "--probe-ips", pod.String()},
			after: []string{"flush", "chain", "inet", "istio-ambient-nat", "postrouting"},
			nft:   want{found: true, v4: []netip.Addr{pod}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			node := testbed.NewNetns(t, testbed.IPv4Only())
			if c.args != nil {
				if err := testbed.WriteAmbientRules(ctx, writer, node.Path(), c.args...); err != nil {
					t.Fatal(err)
				}
			}
			if c.after != nil {
				if _, err := node.Nft(ctx, c.after...); err != nil {
					t.Fatal(err)
				}
			}
			r := ambienthost.Reader{NodeNetns: node.Path(), Rules: nsread.Reader{}}
			var st ambienthost.State
			node.Unchanged(ctx, t, "reading the node side", func() {
				var err error
				if st, err = r.Read(ctx); err != nil {
					t.Fatal(err)
				}
			})
			for _, f := range []struct {
				form string
				side ambienthost.Side
				want want
			}{{"iptables", st.IPTables, c.ipt}, {"nftables", st.Nftables, c.nft}} {
				got := want{found: f.side.Found, v4: f.side.V4.Members, v6: f.side.V6.Members,
					v4Rule: f.side.V4.SNATRule != "", v6Rule: f.side.V6.SNATRule != ""}
				if got.found != f.want.found || !slices.Equal(got.v4, f.want.v4) || !slices.Equal(got.v6, f.want.v6) ||
					got.v4Rule != f.want.v4Rule || got.v6Rule != f.want.v6Rule {
					t.Errorf("%s form reads %+v, want %+v: %+v", f.form, got, f.want, f.side)
				}
			}
			if got, wantTo := st.Nftables.V4.Covers(pod), c.nft.v4Rule && slices.Contains(c.nft.v4, pod); got != wantTo {
				t.Errorf("nftables form covers %s: %v, want %v", pod, got, wantTo)
			}
		})
	}
}
