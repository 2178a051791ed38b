package nftread

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// nft's snat and dnat statements, written by nft itself in a real namespace, read as iptables'
// SNAT and DNAT; the sets of Istio's tables are read with their elements whether or not a rule
// looks them up (istio-cni's host table: its probe sets outlive a flushed chain).
func TestReadNatAndSets(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx := testContext(t)
	ns := testbed.NewNetns(t)
	if err := ns.NftScript(ctx, `
table inet istio-ambient-nat {
	set probes-v4 { type ipv4_addr; elements = { 10.0.0.2, 10.0.0.1 }; }
	set probes-v6 { type ipv6_addr; }
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr @probes-v4 counter snat ip to 169.254.7.127
		ip6 daddr @probes-v6 snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff
		tcp dport 80 snat ip to 10.0.0.1-10.0.0.5:1000-2000
		tcp dport 81 snat ip to 10.0.0.7 persistent
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 82 dnat ip to 10.0.0.9:8080
		tcp dport 83 dnat ip6 to [fd00::9]:8080
	}
}
table inet istio-unlooked {
	set lonely { type ipv4_addr; elements = { 192.0.2.1 }; }
}`); err != nil {
		t.Fatal(err)
	}
	res, err := Read(ctx, ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		family       rules.Family
		chain, match string // match: a substring of the rule's matches that picks it
		want         rules.Target
	}{
		{rules.IPv4, "POSTROUTING", "@probes-v4", rules.Target{Name: "SNAT", Args: "--to-source 169.254.7.127"}},
		{rules.IPv6, "POSTROUTING", "@probes-v6", rules.Target{Name: "SNAT", Args: "--to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff"}},
		{rules.IPv4, "POSTROUTING", "--dport 80", rules.Target{Name: "SNAT", Args: "--to-source 10.0.0.1-10.0.0.5:1000-2000"}},
		{rules.IPv4, "POSTROUTING", "--dport 81", rules.Target{Name: "SNAT", Args: "--to-source 10.0.0.7 ?flags=0x9"}},
		{rules.IPv4, "PREROUTING", "--dport 82", rules.Target{Name: "DNAT", Args: "--to-destination 10.0.0.9:8080"}},
		{rules.IPv6, "PREROUTING", "--dport 83", rules.Target{Name: "DNAT", Args: "--to-destination [fd00::9]:8080"}},
	}
	for _, c := range cases {
		t.Run(c.family.String()+" "+c.match, func(t *testing.T) {
			set := res.Set(rules.BackendNative, c.family)
			if set == nil || set.Table("nat") == nil || set.Table("nat").Chain(c.chain) == nil {
				t.Fatalf("no native nat %s in %+v", c.chain, set)
			}
			var specs []string
			for _, r := range set.Table("nat").Chain(c.chain).Rules {
				specs = append(specs, r.Spec())
				if strings.Contains(r.Spec(), c.match) {
					if r.Target != c.want {
						t.Errorf("%q: target %+v, want %+v", r.Spec(), r.Target, c.want)
					}
					return
				}
			}
			t.Errorf("no rule matching %q in %q", c.match, specs)
		})
	}

	sets := []struct {
		table, name string
		want        []netip.Addr
	}{
		{"inet istio-ambient-nat", "probes-v4", []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}},
		{"inet istio-ambient-nat", "probes-v6", nil},
		{"inet istio-unlooked", "lonely", []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
	}
	for _, c := range sets {
		s, ok := res.NamedSet(c.table, c.name)
		if !ok {
			t.Errorf("set %s %s not read: %+v", c.table, c.name, res.NamedSets)
			continue
		}
		if got := s.Addrs(); !slices.Equal(got, c.want) {
			t.Errorf("set %s %s holds %v, want %v", c.table, c.name, got, c.want)
		}
	}
}
