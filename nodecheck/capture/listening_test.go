package capture

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// A socket is judged by what the reader listed: a UDP socket the reader did not list (no rule
// sends UDP anywhere) is neither found nor missing, never a false "nothing listens".
func TestListeningJudgesOnlyWhatWasListed(t *testing.T) {
	want := []targetSocket{{rules.TCP, 15001}, {rules.TCP, 15053}, {rules.UDP, 15053}}
	tcp := []rules.Listener{{Proto: rules.TCP, Addr: netip.MustParseAddrPort("127.0.0.1:15001")}}
	for _, c := range []struct {
		name           string
		snap           rules.Snapshot
		found, missing []string
	}{
		{"UDP listed, DNS proxy gone", rules.Snapshot{Listeners: tcp},
			[]string{"tcp 127.0.0.1:15001"}, []string{"tcp/15053", "udp/15053"}},
		{"UDP not listed", rules.Snapshot{Listeners: tcp, UDPNotListed: true},
			[]string{"tcp 127.0.0.1:15001"}, []string{"tcp/15053"}},
		{"UDP listed and held", rules.Snapshot{Listeners: append(slices.Clone(tcp),
			rules.Listener{Proto: rules.TCP, Addr: netip.MustParseAddrPort("127.0.0.1:15053")},
			rules.Listener{Proto: rules.UDP, Addr: netip.MustParseAddrPort("127.0.0.1:15053")})},
			[]string{"tcp 127.0.0.1:15001", "tcp 127.0.0.1:15053", "udp 127.0.0.1:15053"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			found, missing := listening(want, c.snap)
			if !slices.Equal(found, c.found) || !slices.Equal(missing, c.missing) {
				t.Errorf("found %q missing %q, want %q and %q", found, missing, c.found, c.missing)
			}
		})
	}
}
