package capture

import (
	"net/netip"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
)

func TestExpectIPv6(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00::5")
	ll := netip.MustParseAddr("fe80::1")
	cases := []struct {
		name      string
		dualStack bool
		addrs     []netip.Addr
		want      bool
	}{
		{"ipv4 only", false, []netip.Addr{v4}, false},
		{"dual stack, flag off: first address wins", false, []netip.Addr{v4, v6}, false},
		{"dual stack, flag on", true, []netip.Addr{v4, v6}, true},
		{"ipv6 only", false, []netip.Addr{ll, v6}, true},
		{"link-local only", false, []netip.Addr{ll}, false},
	}
	for _, c := range cases {
		if got := ExpectIPv6(intent.Config{DualStack: c.dualStack}, c.addrs); got != c.want {
			t.Errorf("%s: ExpectIPv6 = %v, want %v", c.name, got, c.want)
		}
	}
}
