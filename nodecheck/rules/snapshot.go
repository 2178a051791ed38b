package rules

import (
	"fmt"
	"net/netip"
	"strings"
)

// Snapshot is what a reader of capture rules saw in one network namespace.
type Snapshot struct {
	// Sets holds every rule set read, any backend and family, empty tables included.
	Sets []*RuleSet
	// Addrs are the namespace's interface addresses, loopback device excluded, in the kernel's
	// order (Istio's writer decides IPv6 capture from them).
	Addrs []netip.Addr
	// Routing holds the policy-routing rules that select packets by mark, with whether their
	// table routes everything locally: what TPROXY capture needs besides its mangle rules.
	Routing []MarkRoute
	// Listeners are the namespace's listening TCP and bound UDP sockets, both families: what
	// the rules' redirect targets need (ztunnel listens inside an ambient pod's namespace).
	Listeners []Listener
	// UDPNotListed is true when the UDP sockets were not listed, because no rule read sends UDP
	// anywhere (most pods: DNS capture is off): each UDP listing walks the kernel's whole UDP
	// hash table, shared by every namespace. A UDP socket is then neither found nor missing.
	UDPNotListed bool
}

// RedirectsUDP reports whether any rule of sets matches UDP: only then can a UDP socket be the
// target of a redirect (DNS capture), so only then are UDP listeners worth listing.
func RedirectsUDP(sets []*RuleSet) bool {
	for _, s := range sets {
		for _, t := range s.Tables {
			for _, c := range t.Chains {
				for _, r := range c.Rules {
					for _, m := range r.Matches {
						if (m.Kind == MatchProtocol || m.Kind == MatchOther) && strings.Contains(m.Value, "udp") {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

// MarkRoute is one `ip rule fwmark MARK lookup TABLE` and what TABLE holds.
type MarkRoute struct {
	Family Family `json:"-"`
	Mark   uint32 `json:"mark"`
	Mask   uint32 `json:"mask"`
	Table  int    `json:"table"`
	// LocalDefault is true when TABLE has `local default dev lo`.
	LocalDefault bool `json:"localDefault"`
}

func (m MarkRoute) String() string {
	s := fmt.Sprintf("%s rule fwmark 0x%x/0x%x lookup %d", m.Family, m.Mark, m.Mask, m.Table)
	if !m.LocalDefault {
		s += " (table has no local default route via lo)"
	}
	return s
}

// Proto is a transport protocol a socket listens on.
type Proto string

const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// Listener is one socket of a namespace that can receive new traffic: a TCP socket in LISTEN, or
// a bound, unconnected UDP socket.
type Listener struct {
	Proto Proto          `json:"proto"`
	Addr  netip.AddrPort `json:"addr"`
}

func (l Listener) String() string { return string(l.Proto) + " " + l.Addr.String() }
