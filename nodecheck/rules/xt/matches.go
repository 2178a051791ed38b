package xt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// matchDecoder returns what one match extension says, or ErrNotDecoded for a revision it does
// not know and another error for a structure it cannot read.
type matchDecoder func(family rules.Family, rev uint32, data []byte) (matchOut, error)

// matchOut collects a match's conditions. Options the model has no kind for are gathered into
// one MatchOther per match, as ParseSave does with the unknown options of one -m module.
type matchOut struct {
	matches []rules.Match
	other   []string
}

func (o *matchOut) add(kind rules.MatchKind, not bool, value string) {
	o.matches = append(o.matches, rules.Match{Kind: kind, Not: not, Value: value})
}

func (o *matchOut) addOther(not bool, text string) {
	o.other = append(o.other, bang(not)+text)
}

// matchDecoderFor returns the decoder of the match extensions Istio's rules use, plus their close
// relatives; nil for the others.
func matchDecoderFor(name string) matchDecoder {
	switch name {
	case "tcp":
		return decodeTCP
	case "udp":
		return decodeUDP
	case "owner":
		return decodeOwner
	case "multiport":
		return decodeMultiport
	case "mark":
		return decodeMark(rules.MatchMark)
	case "connmark":
		return decodeMark(rules.MatchConnMark)
	case "conntrack":
		return decodeConntrack
	case "state":
		return decodeState
	case "socket":
		return decodeSocket
	case "comment":
		return func(rules.Family, uint32, []byte) (matchOut, error) { return matchOut{}, nil } // changes nothing
	}
	return nil
}

// Match decodes the info of match extension name at revision rev, in a table of family, into
// the conditions it stands for. An extension or revision without a decoder is ErrNotDecoded.
func Match(family rules.Family, name string, rev uint32, info []byte) ([]rules.Match, error) {
	dec := matchDecoderFor(name)
	if dec == nil {
		return nil, fmt.Errorf("match %s revision %d: %w", name, rev, ErrNotDecoded)
	}
	// The decoder returns its matchOut rather than filling one it is given: through a func
	// value, a pointer would move it to the heap, once per match of every rule.
	o, err := dec(family, rev, info)
	if err != nil {
		return nil, fmt.Errorf("match %s revision %d: %w", name, rev, err)
	}
	if len(o.other) > 0 {
		o.matches = append(o.matches, rules.Match{Kind: rules.MatchOther, Value: strings.Join(o.other, " ")})
	}
	return o.matches, nil
}

// ports appends a port-range condition unless it is the full range (what a bare `-m tcp` has);
// an inverted full range matches nothing and is kept.
func (o *matchOut) ports(kind rules.MatchKind, lo, hi uint16, not bool) {
	if lo == 0 && hi == 0xffff && !not {
		return
	}
	o.add(kind, not, rules.PortRangeValue(lo, hi))
}

// decodeTCP reads struct xt_tcp: spts[2], dpts[2], option, flg_mask, flg_cmp, invflags.
func decodeTCP(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	if err := revisionAndSize(rev, 0, d, 12); err != nil {
		return o, err
	}
	inv := d[11]
	o.ports(rules.MatchSourcePort, ne.Uint16(d[0:]), ne.Uint16(d[2:]), inv&0x01 != 0)
	o.ports(rules.MatchDestinationPort, ne.Uint16(d[4:]), ne.Uint16(d[6:]), inv&0x02 != 0)
	if mask := d[9]; mask != 0 || inv&0x04 != 0 {
		o.addOther(inv&0x04 != 0, "--tcp-flags "+tcpFlags(mask)+" "+tcpFlags(d[10]))
	}
	if opt := d[8]; opt != 0 || inv&0x08 != 0 {
		o.addOther(inv&0x08 != 0, "--tcp-option "+strconv.Itoa(int(opt)))
	}
	return o, nil
}

func tcpFlags(f uint8) string {
	if f == 0 {
		return "NONE"
	}
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// decodeUDP reads struct xt_udp: spts[2], dpts[2], invflags.
func decodeUDP(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	if err := revisionAndSize(rev, 0, d, 9); err != nil {
		return o, err
	}
	inv := d[8]
	o.ports(rules.MatchSourcePort, ne.Uint16(d[0:]), ne.Uint16(d[2:]), inv&0x01 != 0)
	o.ports(rules.MatchDestinationPort, ne.Uint16(d[4:]), ne.Uint16(d[6:]), inv&0x02 != 0)
	return o, nil
}

// Bits of xt_owner_match_info's match and invert fields.
const (
	ownerUID         = 0x01
	ownerGID         = 0x02
	ownerSocket      = 0x04
	ownerSupplGroups = 0x08
)

// decodeOwner reads struct xt_owner_match_info (revision 1; 0 is long gone from the kernel):
// uid_min, uid_max, gid_min, gid_max, match, invert.
func decodeOwner(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	if err := revisionAndSize(rev, 1, d, 18); err != nil {
		return o, err
	}
	match, inv := d[16], d[17]
	if unknown := match &^ (ownerUID | ownerGID | ownerSocket | ownerSupplGroups); unknown != 0 {
		return o, fmt.Errorf("unknown owner flags %#x", match)
	}
	if match&ownerSocket != 0 {
		o.addOther(inv&ownerSocket != 0, "--socket-exists")
	}
	if match&ownerUID != 0 {
		o.add(rules.MatchUIDOwner, inv&ownerUID != 0, rules.IDRangeValue(ne.Uint32(d[0:]), ne.Uint32(d[4:])))
	}
	if match&ownerGID != 0 {
		o.add(rules.MatchGIDOwner, inv&ownerGID != 0, rules.IDRangeValue(ne.Uint32(d[8:]), ne.Uint32(d[12:])))
	}
	if match&ownerSupplGroups != 0 {
		o.addOther(inv&ownerSupplGroups != 0, "--suppl-groups")
	}
	return o, nil
}

const multiportMax = 15 // XT_MULTI_PORTS

// decodeMultiport reads struct xt_multiport (rev 0: flags, count, ports[15]) and
// xt_multiport_v1 (rev 1: the same, then pflags[15] marking ranges, and invert).
func decodeMultiport(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	const portsAt = 2
	var pflags []byte
	var not bool
	switch rev {
	case 0:
		if err := need(d, portsAt+2*multiportMax); err != nil {
			return o, err
		}
	case 1:
		if err := need(d, portsAt+3*multiportMax+1); err != nil {
			return o, err
		}
		pflags = d[portsAt+2*multiportMax : portsAt+3*multiportMax]
		not = d[portsAt+3*multiportMax] != 0
	default:
		return o, ErrNotDecoded
	}
	count := int(d[1])
	if count == 0 || count > multiportMax {
		return o, fmt.Errorf("multiport with %d ports", count)
	}
	port := func(i int) uint16 { return ne.Uint16(d[portsAt+2*i:]) }
	var parts []string
	for i := 0; i < count; i++ {
		if pflags != nil && pflags[i] != 0 {
			if i+1 >= count {
				return o, errors.New("multiport range without an end")
			}
			parts = append(parts, rules.PortRangeValue(port(i), port(i+1)))
			i++
			continue
		}
		parts = append(parts, rules.PortRangeValue(port(i), port(i)))
	}
	list := strings.Join(parts, ",")
	switch d[0] {
	case 0: // XT_MULTIPORT_SOURCE
		o.add(rules.MatchSourcePorts, not, list)
	case 1: // XT_MULTIPORT_DESTINATION
		o.add(rules.MatchDestinationPorts, not, list)
	case 2: // XT_MULTIPORT_EITHER: the model has no kind for "source or destination"
		o.other = append(o.other, "-m multiport "+bang(not)+"--ports "+list)
	default:
		return o, fmt.Errorf("multiport flags %d", d[0])
	}
	return o, nil
}

// decodeMark reads struct xt_mark_mtinfo1 / xt_connmark_mtinfo1 (revision 1): mark, mask, invert.
func decodeMark(kind rules.MatchKind) matchDecoder {
	return func(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
		if err := revisionAndSize(rev, 1, d, 9); err != nil {
			return o, err
		}
		o.add(kind, d[8] != 0, rules.MarkValue(ne.Uint32(d[0:]), ne.Uint32(d[4:])))
		return o, nil
	}
}

// stateBit names one bit of a conntrack state mask.
type stateBit struct {
	bit  uint16
	name string
}

// conntrackStates are xt_conntrack's state bits (XT_CONNTRACK_STATE_BIT(ctinfo) is
// 1 << (ctinfo%IP_CT_IS_REPLY + 1), then INVALID, SNAT, DNAT, UNTRACKED); stateStates are the old
// xt_state's, which has UNTRACKED where conntrack has SNAT.
var (
	conntrackStates = []stateBit{{1 << 0, "INVALID"}, {1 << 1, "ESTABLISHED"}, {1 << 2, "RELATED"}, {1 << 3, "NEW"}, {1 << 6, "SNAT"}, {1 << 7, "DNAT"}, {1 << 8, "UNTRACKED"}}
	stateStates     = []stateBit{{1 << 0, "INVALID"}, {1 << 1, "ESTABLISHED"}, {1 << 2, "RELATED"}, {1 << 3, "NEW"}, {1 << 6, "UNTRACKED"}}
)

func ctStates(mask uint16, bits []stateBit) string {
	var names []string
	for _, s := range bits {
		if mask&s.bit != 0 {
			names = append(names, s.name)
			mask &^= s.bit
		}
	}
	// Unknown bits go in as one name: rules.CTStateValue orders names it does not know by map
	// iteration, so two of them would not render the same way twice.
	var unknown []string
	for i := range 16 {
		if mask&(1<<i) != 0 {
			unknown = append(unknown, "BIT"+strconv.Itoa(i))
		}
	}
	if len(unknown) > 0 {
		names = append(names, strings.Join(unknown, "+"))
	}
	return rules.CTStateValue(names)
}

// xt_conntrack match_flags.
const (
	ctFlagState       = 1 << 0
	ctFlagProto       = 1 << 1
	ctFlagOrigSrc     = 1 << 2
	ctFlagOrigDst     = 1 << 3
	ctFlagReplSrc     = 1 << 4
	ctFlagReplDst     = 1 << 5
	ctFlagStatus      = 1 << 6
	ctFlagExpires     = 1 << 7
	ctFlagOrigSrcPort = 1 << 8
	ctFlagOrigDstPort = 1 << 9
	ctFlagReplSrcPort = 1 << 10
	ctFlagReplDstPort = 1 << 11
	ctFlagDirection   = 1 << 12
	ctFlagStateAlias  = 1 << 13
)

// decodeConntrack reads struct xt_conntrack_mtinfo1/2/3. They share their start: eight
// nf_inet_addr (orig/repl src/dst, each with its mask), expires_min/max, l4proto, four ports
// (network order), match_flags, invert_flags; then state_mask and status_mask (u8 in rev 1,
// u16 from rev 2), and in rev 3 the upper ends of the four port ranges.
func decodeConntrack(family rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	const (
		expiresAt = 128
		protoAt   = 136
		portsAt   = 138
		flagsAt   = 146
		invertAt  = 148
		stateAt   = 150
		highAt    = 154
	)
	if family != rules.IPv4 && family != rules.IPv6 {
		return o, errFamily(family) // the addresses are read as the family's
	}
	var state, status uint16
	switch rev {
	case 1:
		if err := need(d, 152); err != nil {
			return o, err
		}
		state, status = uint16(d[stateAt]), uint16(d[stateAt+1])
	case 2, 3:
		size := 154
		if rev == 3 {
			size = 162
		}
		if err := need(d, size); err != nil {
			return o, err
		}
		state, status = ne.Uint16(d[stateAt:]), ne.Uint16(d[stateAt+2:])
	default:
		return o, ErrNotDecoded
	}
	flags, inv := ne.Uint16(d[flagsAt:]), ne.Uint16(d[invertAt:])
	if flags&ctFlagState != 0 {
		o.add(rules.MatchCTState, inv&ctFlagState != 0, ctStates(state, conntrackStates))
	}
	if flags&ctFlagProto != 0 {
		// iptables-save prints the number here, and ParseSave keeps it verbatim.
		o.addOther(inv&ctFlagProto != 0, "--ctproto "+strconv.Itoa(int(ne.Uint16(d[protoAt:]))))
	}
	addrs := []struct {
		flag uint16
		opt  string
	}{{ctFlagOrigSrc, "--ctorigsrc"}, {ctFlagOrigDst, "--ctorigdst"}, {ctFlagReplSrc, "--ctreplsrc"}, {ctFlagReplDst, "--ctrepldst"}}
	for i, a := range addrs {
		if flags&a.flag == 0 {
			continue
		}
		addr, mask := d[32*i:32*i+16], d[32*i+16:32*i+32]
		o.addOther(inv&a.flag != 0, a.opt+" "+inetPrefix(family, addr, mask))
	}
	if flags&ctFlagStatus != 0 {
		o.addOther(inv&ctFlagStatus != 0, "--ctstatus "+ctStatus(status))
	}
	if flags&ctFlagExpires != 0 {
		lo, hi := ne.Uint32(d[expiresAt:]), ne.Uint32(d[expiresAt+4:])
		v := strconv.FormatUint(uint64(lo), 10)
		if hi != lo {
			v += ":" + strconv.FormatUint(uint64(hi), 10)
		}
		o.addOther(inv&ctFlagExpires != 0, "--ctexpire "+v)
	}
	portOpts := []struct {
		flag uint16
		opt  string
	}{{ctFlagOrigSrcPort, "--ctorigsrcport"}, {ctFlagOrigDstPort, "--ctorigdstport"}, {ctFlagReplSrcPort, "--ctreplsrcport"}, {ctFlagReplDstPort, "--ctrepldstport"}}
	for i, p := range portOpts {
		if flags&p.flag == 0 {
			continue
		}
		// Revisions 1 and 2 keep one port in network order; revision 3 a range in host order.
		lo := binary.BigEndian.Uint16(d[portsAt+2*i:])
		hi := lo
		if rev == 3 {
			lo, hi = ne.Uint16(d[portsAt+2*i:]), ne.Uint16(d[highAt+2*i:])
		}
		o.addOther(inv&p.flag != 0, p.opt+" "+rules.PortRangeValue(lo, hi))
	}
	if flags&ctFlagDirection != 0 {
		dir := "ORIGINAL"
		if inv&ctFlagDirection != 0 {
			dir = "REPLY"
		}
		o.addOther(false, "--ctdir "+dir)
	}
	const known = ctFlagState | ctFlagProto | ctFlagOrigSrc | ctFlagOrigDst | ctFlagReplSrc | ctFlagReplDst |
		ctFlagStatus | ctFlagExpires | ctFlagOrigSrcPort | ctFlagOrigDstPort | ctFlagReplSrcPort |
		ctFlagReplDstPort | ctFlagDirection | ctFlagStateAlias
	if unknown := flags &^ known; unknown != 0 {
		o.addOther(false, fmt.Sprintf("conntrack flags 0x%x", unknown))
	}
	return o, nil
}

func inetPrefix(family rules.Family, addr, mask []byte) string {
	if family == rules.IPv4 {
		addr, mask = addr[:4], mask[:4]
	}
	if bits, ok := rules.MaskBits(mask); ok {
		if bits == 8*len(addr) { // iptables-save prints a host without its length here
			return addrFrom(addr).String()
		}
		return rules.PrefixValue(netip.PrefixFrom(addrFrom(addr), bits))
	}
	return addrFrom(addr).String() + "/" + addrFrom(mask).String()
}

func ctStatus(s uint16) string {
	if s == 0 {
		return "NONE"
	}
	names := []string{"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED"}
	var out []string
	for i, n := range names {
		if s&(1<<i) != 0 {
			out = append(out, n)
			s &^= 1 << i
		}
	}
	if s != 0 {
		out = append(out, fmt.Sprintf("0x%x", s))
	}
	return strings.Join(out, ",")
}

// decodeState reads struct xt_state_info (the old `-m state`): one state mask, inversion
// already applied to it by iptables.
func decodeState(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	if err := revisionAndSize(rev, 0, d, 4); err != nil {
		return o, err
	}
	mask := ne.Uint32(d)
	if mask>>16 != 0 {
		return o, fmt.Errorf("unknown state bits %#x", mask)
	}
	o.add(rules.MatchCTState, false, ctStates(uint16(mask), stateStates))
	return o, nil
}

// decodeSocket reads the socket match: no data in revision 0, one flags byte from revision 1.
// The flags are listed in the order iptables-save prints them, as ParseSave collects them.
func decodeSocket(_ rules.Family, rev uint32, d []byte) (o matchOut, err error) {
	if rev > 3 {
		return o, ErrNotDecoded
	}
	if rev > 0 {
		if err := need(d, 1); err != nil {
			return o, err
		}
	}
	var opts []string
	if rev > 0 {
		f := d[0]
		for _, fl := range []struct {
			bit  uint8
			name string
		}{{0x01, "--transparent"}, {0x02, "--nowildcard"}, {0x04, "--restore-skmark"}} {
			if f&fl.bit != 0 {
				opts = append(opts, fl.name)
				f &^= fl.bit
			}
		}
		if f != 0 {
			opts = append(opts, fmt.Sprintf("flags=0x%x", f))
		}
	}
	o.add(rules.MatchSocket, false, strings.Join(opts, " "))
	return o, nil
}
