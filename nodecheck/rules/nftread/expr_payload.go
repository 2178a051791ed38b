package nftread

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// payload decodes a load of header bytes (addresses, ports, flags) for a later cmp, range or
// lookup; a payload write (mangling) is kept whole as MatchOther.
func (d *ruleDecoder) payload(data []byte) error {
	at := parseAttrs(data)
	r := register{kind: regPayload}
	r.base, _ = at.u32(unix.NFTA_PAYLOAD_BASE)
	r.offset, _ = at.u32(unix.NFTA_PAYLOAD_OFFSET)
	r.length, _ = at.u32(unix.NFTA_PAYLOAD_LEN)
	dreg, hasDreg := at.u32(unix.NFTA_PAYLOAD_DREG)
	hasSreg := at.has(unix.NFTA_PAYLOAD_SREG)
	if at.err != nil {
		return at.err
	}
	if hasSreg {
		d.other("payload set %s", r.describe())
		return nil
	}
	if !hasDreg {
		return fmt.Errorf("payload without a register")
	}
	return d.load(dreg, r)
}

// l3 is the family whose headers a network-header payload reads: the table's, or for inet
// tables the one an earlier `meta nfproto` established.
func (d *ruleDecoder) l3() rules.Family {
	if d.conflict {
		return 0
	}
	return d.out.only
}

// portField says whether the register holds a transport-header port (th sport/dport).
func (d *ruleDecoder) portField(r register) (rules.MatchKind, bool) {
	if r.kind != regPayload || r.base != unix.NFT_PAYLOAD_TRANSPORT_HEADER || r.length != 2 {
		return 0, false
	}
	switch r.offset {
	case 0:
		return rules.MatchSourcePort, true
	case 2:
		return rules.MatchDestinationPort, true
	}
	return 0, false
}

func (d *ruleDecoder) payloadMatch(r register, not bool, value []byte) bool {
	if kind, ok := d.portField(r); ok {
		if r.mask != nil || len(value) != 2 {
			return false
		}
		p := binary.BigEndian.Uint16(value)
		d.add(kind, not, rules.PortRangeValue(p, p))
		return true
	}
	if r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && r.offset == 13 && r.length == 1 && d.l4proto == unix.IPPROTO_TCP &&
		len(value) == 1 && len(r.mask) == 1 && isZero(r.xor) {
		// iptables-nft writes --tcp-flags (and --syn) natively: (flags & MASK) == COMP.
		d.add(rules.MatchOther, false, tcpFlagsOption(not, r.mask[0], value[0]))
		return true
	}
	if r.base != unix.NFT_PAYLOAD_NETWORK_HEADER {
		return false
	}
	var saddr, daddr, proto uint32
	var size int
	switch d.l3() {
	case rules.IPv4:
		saddr, daddr, proto, size = 12, 16, 9, 4
	case rules.IPv6:
		saddr, daddr, proto, size = 8, 24, 6, 16
	default:
		return false
	}
	switch {
	case r.offset == proto && r.length == 1 && r.mask == nil && len(value) == 1:
		d.add(rules.MatchProtocol, not, rules.ProtocolValue(value[0]))
		if !not {
			d.l4proto = int(value[0])
		}
		return true
	case (r.offset == saddr || r.offset == daddr) && r.length >= 1 && int(r.length) <= size && len(value) == int(r.length):
		pfx, ok := prefixOf(value, r.mask, r.xor, size)
		if !ok {
			return false
		}
		kind := rules.MatchSource
		if r.offset == daddr {
			kind = rules.MatchDestination
		}
		d.add(kind, not, rules.PrefixValue(pfx))
		return true
	}
	return false
}

// tcpFlagsOption spells a TCP flags test as iptables-save does ("--tcp-flags FIN,SYN,RST,ACK SYN",
// which is also what --syn is saved as); the model has no kind for it, so it is MatchOther.
func tcpFlagsOption(not bool, mask, comp byte) string {
	names := func(bits byte) string {
		if bits == 0 {
			return "NONE"
		}
		var out []string
		for i, n := range []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"} {
			if bits&(1<<i) != 0 {
				out = append(out, n)
			}
		}
		return strings.Join(out, ",")
	}
	neg := ""
	if not {
		neg = "! "
	}
	return neg + "--tcp-flags " + names(mask) + " " + names(comp)
}

// prefixOf reads an address compared on its first len(value) bytes, under an optional
// contiguous mask of the same length: both iptables-nft and nft load only the bytes a prefix
// covers (10.0.0.0/8 is a 1-byte load) and mask the last partial byte.
func prefixOf(value, mask, xor []byte, size int) (netip.Prefix, bool) {
	if !isZero(xor) {
		return netip.Prefix{}, false
	}
	bits := len(value) * 8
	if mask != nil {
		if len(mask) != len(value) {
			return netip.Prefix{}, false
		}
		var ok bool
		if bits, ok = rules.MaskBits(mask); !ok {
			return netip.Prefix{}, false
		}
	}
	full := make([]byte, size)
	copy(full, value)
	addr, ok := netip.AddrFromSlice(full)
	if !ok {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, bits), true
}

// payloadName names the header fields Istio's rules load, and spells any other load by position.
func payloadName(r register) string {
	switch {
	case r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && r.offset == 0 && r.length == 2:
		return "th sport"
	case r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && r.offset == 2 && r.length == 2:
		return "th dport"
	}
	return fmt.Sprintf("payload %s+%d/%d", payloadBaseName(r.base), r.offset, r.length)
}

func payloadBaseName(b uint32) string {
	switch b {
	case unix.NFT_PAYLOAD_LL_HEADER:
		return "link"
	case unix.NFT_PAYLOAD_NETWORK_HEADER:
		return "network"
	case unix.NFT_PAYLOAD_TRANSPORT_HEADER:
		return "transport"
	}
	return fmt.Sprintf("base%d", b)
}
