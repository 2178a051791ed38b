package xt

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// SNAT as istio-cni's host rule writes it (the bytes iptables-nft stored for
// `-j SNAT --to-source 169.254.7.127` and its IPv6 twin, read back from a test netns where
// Istio's own code wrote them), plus a port range and a short structure.
func TestDecodeSNAT(t *testing.T) {
	cases := []struct {
		name   string
		family rules.Family
		rev    uint32
		hex    string
		want   string
		err    bool
	}{
		{"istio-cni's IPv4 probe SNAT", rules.IPv4, 0, "0100000001000000a9fe077fa9fe077f00000000", "--to-source 169.254.7.127", false},
		{"istio-cni's IPv6 probe SNAT", rules.IPv6, 1, "01000000fd16925471271337fffffffffffffffffd16925471271337ffffffffffffffff00000000",
			"--to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff", false},
		{"an address range and ports", rules.IPv4, 0, "01000000030000000a0000010a0000020400040a", "--to-source 10.0.0.1-10.0.0.2:1024-1034", false},
		{"revision 2, random-fully", rules.IPv4, 2, "110000000a000001" + strings.Repeat("00", 12) + "0a000001" + strings.Repeat("00", 12) + "00000000", "--to-source 10.0.0.1 --random-fully", false},
		{"two ranges", rules.IPv4, 0, "02000000" + strings.Repeat("00", 16), "", true},
		{"short", rules.IPv6, 1, "01000000fd16", "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := hex.DecodeString(c.hex)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Target(c.family, "SNAT", c.rev, b)
			if (err != nil) != c.err {
				t.Fatalf("error %v, want error %v", err, c.err)
			}
			if err == nil && (got.Name != "SNAT" || got.Args != c.want) {
				t.Errorf("got %s %s, want SNAT %s", got.Name, got.Args, c.want)
			}
		})
	}
}
