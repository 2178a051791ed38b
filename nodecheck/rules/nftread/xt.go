package nftread

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// iptables-nft puts what it cannot express natively into xtables-compat `match` and `target`
// expressions: the extension's name, revision, and its kernel struct as raw bytes in host byte
// order (NFTA_MATCH_INFO / NFTA_TARGET_INFO). google/nftables' xt package decodes some of those
// structs; the others are decoded here from linux/netfilter/xt_*.h. Every decoder checks the
// length first: a struct from another ABI or a corrupt dump is an error, never a panic.

// errNotDecoded marks an extension (or revision) this package has no decoder for.
var errNotDecoded = errors.New("not decoded")

// xt decodes a `match` or `target` expression.
func (d *ruleDecoder) xt(data []byte, isTarget bool) error {
	var name string
	var rev uint32
	var info []byte
	var err error
	// NFTA_MATCH_* and NFTA_TARGET_* share their numbers (name 1, rev 2, info 3).
	a := attrIter{b: data}
	for a.next() {
		switch a.typ {
		case unix.NFTA_MATCH_NAME:
			name = a.str()
		case unix.NFTA_MATCH_REV:
			rev, err = a.u32()
		case unix.NFTA_MATCH_INFO:
			info = a.data
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if isTarget {
		t, tp, err := decodeXTTarget(d.ctx.family, name, rev, info)
		if err != nil {
			d.other("-j %s (revision %d, %v) %s", name, rev, err, shortHex(bytes.TrimRight(info, "\x00")))
			d.setTarget(rules.Target{Name: "?" + name})
			return nil
		}
		if tp != nil {
			if d.hasTarget {
				d.other("then -j TPROXY")
				return nil
			}
			d.out.tproxy = tp
		}
		d.setTarget(t)
		return nil
	}
	ms, err := decodeXTMatch(d.ctx.family, name, rev, info)
	if err != nil {
		d.other("-m %s (revision %d, %v) %s", name, rev, err, shortHex(bytes.TrimRight(info, "\x00")))
		return nil
	}
	d.out.rule.Matches = append(d.out.rule.Matches, ms...)
	return nil
}

// Flags of xt_owner_match_info.match (linux/netfilter/xt_owner.h).
const (
	xtOwnerUID          = 1 << 0
	xtOwnerGID          = 1 << 1
	xtOwnerSocketExists = 1 << 2
	xtOwnerSupplGroups  = 1 << 3
)

// Conntrack state bits of xt_conntrack (XT_CONNTRACK_STATE_BIT(ctinfo) = 1 << (ctinfo + 1)).
// xt_state shares the first four and has UNTRACKED at 1<<6, where xt_conntrack has SNAT.
const (
	xtStateInvalid     = 1 << 0
	xtStateEstablished = 1 << 1
	xtStateRelated     = 1 << 2
	xtStateNew         = 1 << 3
	xtConntrackSNAT    = 1 << 6
	xtConntrackDNAT    = 1 << 7
	xtConntrackUntrack = 1 << 8
	xtStateUntracked   = 1 << 6
)

// decodeXTMatch decodes the info of an xtables-compat match into the Matches it stands for.
func decodeXTMatch(family uint8, name string, rev uint32, info []byte) ([]rules.Match, error) {
	switch name {
	case "comment":
		return nil, nil // a comment changes nothing about what a rule does
	case "tcp", "udp", "conntrack":
		if family != unix.NFPROTO_IPV4 && family != unix.NFPROTO_IPV6 {
			return nil, fmt.Errorf("in a table of family %s", familyName(family))
		}
		v, err := xt.Unmarshal(name, xt.TableFamily(family), rev, info)
		if err != nil {
			return nil, err
		}
		switch v := v.(type) {
		case *xt.Tcp:
			return tcpMatches(v), nil
		case *xt.Udp:
			return udpMatches(v), nil
		case *xt.ConntrackMtinfo1:
			return conntrackMatches(v.MatchFlags, v.InvertFlags, uint16(v.StateMask))
		case *xt.ConntrackMtinfo2:
			return conntrackMatches(v.MatchFlags, v.InvertFlags, v.StateMask)
		case *xt.ConntrackMtinfo3:
			return conntrackMatches(v.MatchFlags, v.InvertFlags, v.StateMask)
		}
		return nil, errNotDecoded
	case "state":
		// struct xt_state_info { unsigned int statemask; }
		if err := need(info, 4); err != nil {
			return nil, err
		}
		states, ok := xtStates(binary.NativeEndian.Uint32(info), xtStateUntracked, 0, 0)
		if !ok {
			return nil, fmt.Errorf("unknown state bits %#x", binary.NativeEndian.Uint32(info))
		}
		return []rules.Match{{Kind: rules.MatchCTState, Value: states}}, nil
	case "owner":
		if rev != 1 {
			return nil, errNotDecoded
		}
		return ownerMatches(info)
	case "multiport":
		return multiportMatches(rev, info)
	case "mark", "connmark":
		// struct xt_mark_mtinfo1 / xt_connmark_mtinfo1 { __u32 mark, mask; __u8 invert; }
		if rev != 1 {
			return nil, errNotDecoded
		}
		if err := need(info, 9); err != nil {
			return nil, err
		}
		kind := rules.MatchMark
		if name == "connmark" {
			kind = rules.MatchConnMark
		}
		mark, mask := binary.NativeEndian.Uint32(info[0:]), binary.NativeEndian.Uint32(info[4:])
		return []rules.Match{{Kind: kind, Not: info[8] != 0, Value: rules.MarkValue(mark, mask)}}, nil
	case "socket":
		// Revision 0 has no info; 1–3 start with struct xt_socket_mtinfo1 { __u8 flags; }.
		if rev == 0 {
			return []rules.Match{{Kind: rules.MatchSocket}}, nil
		}
		if rev > 3 {
			return nil, errNotDecoded
		}
		if err := need(info, 1); err != nil {
			return nil, err
		}
		return []rules.Match{{Kind: rules.MatchSocket, Value: socketOptions(info[0])}}, nil
	}
	return nil, errNotDecoded
}

func need(info []byte, n int) error {
	if len(info) < n {
		return fmt.Errorf("info of %d bytes, want at least %d", len(info), n)
	}
	return nil
}

func portRange(kind rules.MatchKind, p [2]uint16, not bool) []rules.Match {
	if p == [2]uint16{0, 0xffff} {
		return nil // the struct's "any port"
	}
	if p[0] > p[1] {
		return []rules.Match{{Kind: rules.MatchOther, Value: fmt.Sprintf("port range %d:%d (empty)", p[0], p[1])}}
	}
	return []rules.Match{{Kind: kind, Not: not, Value: rules.PortRangeValue(p[0], p[1])}}
}

func tcpMatches(t *xt.Tcp) []rules.Match {
	ms := portRange(rules.MatchSourcePort, t.SrcPorts, t.InvFlags&xt.TcpInvSrcPorts != 0)
	ms = append(ms, portRange(rules.MatchDestinationPort, t.DstPorts, t.InvFlags&xt.TcpInvDestPorts != 0)...)
	if t.FlagsMask != 0 {
		ms = append(ms, rules.Match{Kind: rules.MatchOther, Value: tcpFlagsOption(t.InvFlags&xt.TcpInvFlags != 0, t.FlagsMask, t.FlagsCmp)})
	}
	if t.Option != 0 {
		neg := ""
		if t.InvFlags&xt.TcpInvOption != 0 {
			neg = "! "
		}
		ms = append(ms, rules.Match{Kind: rules.MatchOther, Value: fmt.Sprintf("%s--tcp-option %d", neg, t.Option)})
	}
	return ms
}

func udpMatches(u *xt.Udp) []rules.Match {
	ms := portRange(rules.MatchSourcePort, u.SrcPorts, u.InvFlags&xt.UdpInvSrcPorts != 0)
	return append(ms, portRange(rules.MatchDestinationPort, u.DstPorts, u.InvFlags&xt.UdpInvDestPorts != 0)...)
}

func conntrackMatches(flags, invert, stateMask uint16) ([]rules.Match, error) {
	flags &^= uint16(xt.ConntrackStateAlias) // -m state written as conntrack: same meaning
	var ms []rules.Match
	if flags&uint16(xt.ConntrackState) != 0 {
		states, ok := xtStates(uint32(stateMask), xtConntrackUntrack, xtConntrackSNAT, xtConntrackDNAT)
		if !ok {
			return nil, fmt.Errorf("unknown conntrack state bits %#x", stateMask)
		}
		ms = append(ms, rules.Match{Kind: rules.MatchCTState, Not: invert&uint16(xt.ConntrackState) != 0, Value: states})
	}
	if rest := flags &^ uint16(xt.ConntrackState); rest != 0 {
		ms = append(ms, rules.Match{Kind: rules.MatchOther, Value: fmt.Sprintf("-m conntrack options %#x (not decoded)", rest)})
	}
	return ms, nil
}

func xtStates(bits, untracked, snat, dnat uint32) (string, bool) {
	names := []struct {
		bit  uint32
		name string
	}{
		{xtStateInvalid, "INVALID"}, {xtStateEstablished, "ESTABLISHED"}, {xtStateRelated, "RELATED"},
		{xtStateNew, "NEW"}, {untracked, "UNTRACKED"}, {snat, "SNAT"}, {dnat, "DNAT"},
	}
	var out []string
	for _, n := range names {
		if n.bit != 0 && bits&n.bit != 0 {
			out = append(out, n.name)
			bits &^= n.bit
		}
	}
	if bits != 0 || len(out) == 0 {
		return "", false
	}
	return rules.CTStateValue(out), true
}

// ownerMatches decodes struct xt_owner_match_info
// { __u32 uid_min, uid_max, gid_min, gid_max; __u8 match, invert; }.
func ownerMatches(info []byte) ([]rules.Match, error) {
	if err := need(info, 18); err != nil {
		return nil, err
	}
	ne := binary.NativeEndian
	match, invert := info[16], info[17]
	if match&^(xtOwnerUID|xtOwnerGID|xtOwnerSocketExists|xtOwnerSupplGroups) != 0 {
		return nil, fmt.Errorf("unknown owner flags %#x", match)
	}
	var ms []rules.Match
	if match&xtOwnerUID != 0 {
		ms = append(ms, rules.Match{Kind: rules.MatchUIDOwner, Not: invert&xtOwnerUID != 0,
			Value: rules.IDRangeValue(ne.Uint32(info[0:]), ne.Uint32(info[4:]))})
	}
	if match&xtOwnerGID != 0 {
		ms = append(ms, rules.Match{Kind: rules.MatchGIDOwner, Not: invert&xtOwnerGID != 0,
			Value: rules.IDRangeValue(ne.Uint32(info[8:]), ne.Uint32(info[12:]))})
	}
	// The two flags iptables prints as bare options; spelled as rules.ParseSave keeps them.
	if match&xtOwnerSocketExists != 0 {
		v := "--socket-exists"
		if invert&xtOwnerSocketExists != 0 {
			v = "! " + v
		}
		ms = append(ms, rules.Match{Kind: rules.MatchOther, Value: v})
	}
	if match&xtOwnerSupplGroups != 0 {
		ms = append(ms, rules.Match{Kind: rules.MatchOther, Value: "--suppl-groups"})
	}
	return ms, nil
}

// multiportMatches decodes struct xt_multiport (revision 0) and xt_multiport_v1 (revision 1):
// { __u8 flags; __u8 count; __u16 ports[15]; } and, in v1, { __u8 pflags[15]; __u8 invert; }
// after it, where pflags[i] makes ports[i]:ports[i+1] a range.
func multiportMatches(rev uint32, info []byte) ([]rules.Match, error) {
	const maxPorts = 15
	size := 2 + 2*maxPorts
	if rev == 1 {
		size += maxPorts + 1
	} else if rev != 0 {
		return nil, errNotDecoded
	}
	if err := need(info, size); err != nil {
		return nil, err
	}
	flags, count := info[0], int(info[1])
	if count == 0 || count > maxPorts {
		return nil, fmt.Errorf("multiport with %d ports", count)
	}
	port := func(i int) uint16 { return binary.NativeEndian.Uint16(info[2+2*i:]) }
	var parts []string
	for i := 0; i < count; i++ {
		if rev == 1 && info[2+2*maxPorts+i] != 0 {
			if i+1 >= count {
				return nil, fmt.Errorf("multiport range without an end")
			}
			parts = append(parts, rules.PortRangeValue(port(i), port(i+1)))
			i++
			continue
		}
		parts = append(parts, rules.PortRangeValue(port(i), port(i)))
	}
	not := rev == 1 && info[size-1] != 0
	value := strings.Join(parts, ",")
	switch flags {
	case 0: // XT_MULTIPORT_SOURCE
		return []rules.Match{{Kind: rules.MatchSourcePorts, Not: not, Value: value}}, nil
	case 1: // XT_MULTIPORT_DESTINATION
		return []rules.Match{{Kind: rules.MatchDestinationPorts, Not: not, Value: value}}, nil
	case 2: // XT_MULTIPORT_EITHER: the model has no kind for "source or destination"
		neg := ""
		if not {
			neg = "! "
		}
		return []rules.Match{{Kind: rules.MatchOther, Value: "-m multiport " + neg + "--ports " + value}}, nil
	}
	return nil, fmt.Errorf("multiport flags %d", flags)
}

// socketOptions spells xt_socket flags in the order iptables-save prints them.
func socketOptions(flags byte) string {
	var opts []string
	for _, o := range []struct {
		bit  byte
		name string
	}{{1, "--transparent"}, {2, "--nowildcard"}, {4, "--restore-skmark"}} {
		if flags&o.bit != 0 {
			opts = append(opts, o.name)
		}
	}
	return strings.Join(opts, " ")
}

// NAT range flags (linux/netfilter/nf_nat.h).
const natRangeProtoSpecified = 1 << 1

// decodeXTTarget decodes the info of an xtables-compat target. For TPROXY it also returns the
// options, which are rendered per family.
func decodeXTTarget(family uint8, name string, rev uint32, info []byte) (rules.Target, *tproxyTarget, error) {
	ne := binary.NativeEndian
	switch name {
	case "REDIRECT":
		var flags uint32
		var lo, hi uint16
		if family == unix.NFPROTO_IPV4 {
			// struct nf_nat_ipv4_multi_range_compat { unsigned int rangesize;
			//   struct nf_nat_ipv4_range { unsigned int flags; __be32 min_ip, max_ip;
			//   union nf_conntrack_man_proto min, max; } range[1]; }
			if err := need(info, 20); err != nil {
				return rules.Target{}, nil, err
			}
			if n := ne.Uint32(info[0:]); n != 1 {
				return rules.Target{}, nil, fmt.Errorf("REDIRECT with %d ranges", n)
			}
			flags, lo, hi = ne.Uint32(info[4:]), binary.BigEndian.Uint16(info[16:]), binary.BigEndian.Uint16(info[18:])
		} else {
			// struct nf_nat_range { unsigned int flags; union nf_inet_addr min_addr, max_addr;
			//   union nf_conntrack_man_proto min_proto, max_proto; }
			if err := need(info, 40); err != nil {
				return rules.Target{}, nil, err
			}
			flags, lo, hi = ne.Uint32(info[0:]), binary.BigEndian.Uint16(info[36:]), binary.BigEndian.Uint16(info[38:])
		}
		if flags&natRangeProtoSpecified == 0 {
			lo, hi = 0, 0
		}
		if hi < lo {
			return rules.Target{}, nil, fmt.Errorf("REDIRECT port range %d-%d", lo, hi)
		}
		return rules.Target{Name: "REDIRECT", Args: rules.RedirectArgs(lo, hi)}, nil, nil
	case "TPROXY":
		t := &tproxyTarget{markSet: true}
		switch rev {
		case 0:
			// struct xt_tproxy_target_info { __u32 mark_mask, mark_value; __be32 laddr; __be16 lport; }
			if family != unix.NFPROTO_IPV4 {
				return rules.Target{}, nil, errNotDecoded
			}
			if err := need(info, 14); err != nil {
				return rules.Target{}, nil, err
			}
			t.addr = netip.AddrFrom4([4]byte(info[8:12]))
			t.port = binary.BigEndian.Uint16(info[12:])
		case 1:
			// struct xt_tproxy_target_info_v1 { __u32 mark_mask, mark_value;
			//   union nf_inet_addr laddr; __be16 lport; }
			if err := need(info, 26); err != nil {
				return rules.Target{}, nil, err
			}
			if family == unix.NFPROTO_IPV6 {
				t.addr = netip.AddrFrom16([16]byte(info[8:24]))
			} else {
				t.addr = netip.AddrFrom4([4]byte(info[8:12]))
			}
			t.port = binary.BigEndian.Uint16(info[24:])
		default:
			return rules.Target{}, nil, errNotDecoded
		}
		t.mask, t.mark = ne.Uint32(info[0:]), ne.Uint32(info[4:])
		return rules.Target{Name: "TPROXY"}, t, nil
	case "MARK":
		// struct xt_mark_tginfo2 { __u32 mark, mask; }
		if rev != 2 {
			return rules.Target{}, nil, errNotDecoded
		}
		if err := need(info, 8); err != nil {
			return rules.Target{}, nil, err
		}
		return rules.Target{Name: "MARK", Args: rules.SetMarkArgs(ne.Uint32(info[0:]), ne.Uint32(info[4:]))}, nil, nil
	case "CONNMARK":
		return connmarkTarget(rev, info)
	case "CT":
		return ctTarget(rev, info)
	}
	return rules.Target{}, nil, errNotDecoded
}

// connmarkTarget decodes struct xt_connmark_tginfo1 { __u32 ctmark, ctmask, nfmask; __u8 mode; }
// and xt_connmark_tginfo2, which puts shift_dir and shift_bits before mode.
func connmarkTarget(rev uint32, info []byte) (rules.Target, *tproxyTarget, error) {
	ne := binary.NativeEndian
	var mode, shiftDir, shiftBits byte
	switch rev {
	case 1:
		if err := need(info, 13); err != nil {
			return rules.Target{}, nil, err
		}
		mode = info[12]
	case 2:
		if err := need(info, 15); err != nil {
			return rules.Target{}, nil, err
		}
		shiftDir, shiftBits, mode = info[12], info[13], info[14]
	default:
		return rules.Target{}, nil, errNotDecoded
	}
	ctmark, ctmask, nfmask := ne.Uint32(info[0:]), ne.Uint32(info[4:]), ne.Uint32(info[8:])
	var args string
	switch mode {
	case 0: // XT_CONNMARK_SET
		args = "--set-xmark " + rules.MarkValue(ctmark, ctmask)
	case 1: // XT_CONNMARK_SAVE
		args = rules.ConnMarkArgs("save", nfmask, ctmask)
	case 2: // XT_CONNMARK_RESTORE
		args = rules.ConnMarkArgs("restore", nfmask, ctmask)
	default:
		return rules.Target{}, nil, fmt.Errorf("CONNMARK mode %d", mode)
	}
	if shiftBits != 0 {
		dir := "left"
		if shiftDir != 0 {
			dir = "right"
		}
		args += fmt.Sprintf(" --%s-shift-mark %d", dir, shiftBits)
	}
	return rules.Target{Name: "CONNMARK", Args: args}, nil, nil
}

// Flags of xt_ct_target_info (linux/netfilter/xt_CT.h).
const (
	xtCTNotrack     = 1 << 0
	xtCTZoneDirOrig = 1 << 2
	xtCTZoneDirRepl = 1 << 3
	xtCTZoneMark    = 1 << 4
)

// ctTarget decodes struct xt_ct_target_info (revision 0) and xt_ct_target_info_v1 (1, 2):
// { __u16 flags, zone; __u32 ct_events, exp_events; char helper[16]; [char timeout[32];] … }.
func ctTarget(rev uint32, info []byte) (rules.Target, *tproxyTarget, error) {
	if rev > 2 {
		return rules.Target{}, nil, errNotDecoded
	}
	size := 28
	if rev > 0 {
		size = 60
	}
	if err := need(info, size); err != nil {
		return rules.Target{}, nil, err
	}
	ne := binary.NativeEndian
	flags, zone := ne.Uint16(info[0:]), ne.Uint16(info[2:])
	ctEvents, expEvents := ne.Uint32(info[4:]), ne.Uint32(info[8:])
	helper := cstr(info[12:28])
	var timeout string
	if rev > 0 {
		timeout = cstr(info[28:60])
	}
	if flags&xtCTNotrack != 0 {
		return rules.Target{Name: "CT", Args: "--notrack"}, nil, nil
	}
	var opts []string
	if helper != "" {
		opts = append(opts, "--helper "+helper)
	}
	if ctEvents != 0 {
		opts = append(opts, fmt.Sprintf("--ctevents %#x", ctEvents))
	}
	if expEvents != 0 {
		opts = append(opts, fmt.Sprintf("--expevents %#x", expEvents))
	}
	if zone != 0 || flags&xtCTZoneMark != 0 {
		z := fmt.Sprint(zone)
		if flags&xtCTZoneMark != 0 {
			z = "mark"
		}
		switch flags & (xtCTZoneDirOrig | xtCTZoneDirRepl) {
		case xtCTZoneDirOrig:
			opts = append(opts, "--zone-orig "+z)
		case xtCTZoneDirRepl:
			opts = append(opts, "--zone-reply "+z)
		default:
			if flags&xtCTZoneMark == 0 && len(opts) == 0 && timeout == "" {
				return rules.Target{Name: "CT", Args: rules.CTZoneArgs(zone)}, nil, nil
			}
			opts = append(opts, "--zone "+z)
		}
	}
	if timeout != "" {
		opts = append(opts, "--timeout "+timeout)
	}
	return rules.Target{Name: "CT", Args: strings.Join(opts, " ")}, nil, nil
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
