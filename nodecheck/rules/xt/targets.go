package xt

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// targetDecoder reads one target extension's structure. It returns ErrNotDecoded for a revision
// it does not know and another error for a structure it cannot read.
type targetDecoder func(family rules.Family, rev uint32, data []byte) (rules.Target, error)

// targetDecoderFor returns the decoder of the target extensions Istio's rules use, plus their
// close relatives; nil for the others.
func targetDecoderFor(name string) targetDecoder {
	switch name {
	case "REDIRECT":
		return decodeRedirect
	case "TPROXY":
		return decodeTProxy
	case "MARK":
		return decodeMarkTarget
	case "CONNMARK":
		return decodeConnmark
	case "CT":
		return decodeCT
	case "SNAT":
		return decodeNAT(name)
	}
	return nil
}

// natMapIPs is NF_NAT_RANGE_MAP_IPS: the range has addresses.
const natMapIPs = 0x01

// decodeNAT reads SNAT's range (istio-cni's host rule SNATs kubelet's probes; DNAT shares the
// structure and is left undecoded until a check needs it): rev 0
// struct nf_nat_ipv4_multi_range_compat (IPv4: rangesize, flags, min_ip, max_ip, min and max
// port), rev 1 struct nf_nat_range and rev 2 nf_nat_range2 (flags, min_addr, max_addr, min and
// max port[, base port]), addresses in 16 bytes whatever the family.
func decodeNAT(name string) targetDecoder {
	return func(family rules.Family, rev uint32, d []byte) (rules.Target, error) {
		var flags uint32
		var lo, hi netip.Addr
		var plo, phi uint16
		switch rev {
		case 0:
			if family != rules.IPv4 {
				return rules.Target{}, ErrNotDecoded
			}
			if err := need(d, 20); err != nil {
				return rules.Target{}, err
			}
			if n := ne.Uint32(d); n != 1 {
				return rules.Target{}, fmt.Errorf("%s with %d ranges", name, n)
			}
			flags = ne.Uint32(d[4:])
			lo, hi = netip.AddrFrom4([4]byte(d[8:12])), netip.AddrFrom4([4]byte(d[12:16]))
			plo, phi = binary.BigEndian.Uint16(d[16:]), binary.BigEndian.Uint16(d[18:])
		case 1, 2:
			if err := need(d, 40); err != nil {
				return rules.Target{}, err
			}
			flags = ne.Uint32(d)
			lo, hi = netip.AddrFrom16([16]byte(d[4:20])), netip.AddrFrom16([16]byte(d[20:36]))
			if family == rules.IPv4 {
				lo, hi = netip.AddrFrom4([4]byte(d[4:8])), netip.AddrFrom4([4]byte(d[20:24]))
			}
			plo, phi = binary.BigEndian.Uint16(d[36:]), binary.BigEndian.Uint16(d[38:])
		default:
			return rules.Target{}, ErrNotDecoded
		}
		var to string
		if flags&natMapIPs != 0 {
			to = lo.String()
			if hi != lo {
				to += "-" + hi.String()
			}
			if family == rules.IPv6 && flags&natProtoSpecified != 0 {
				to = "[" + to + "]"
			}
		}
		if flags&natProtoSpecified != 0 {
			to += ":" + strconv.Itoa(int(plo))
			if phi != plo {
				to += "-" + strconv.Itoa(int(phi))
			}
		}
		flag := "--to-source"
		if name == "DNAT" {
			flag = "--to-destination"
		}
		parts := []string{}
		if to != "" {
			parts = append(parts, flag+" "+to)
		}
		if flags&natRandom != 0 {
			parts = append(parts, "--random")
		}
		if flags&natRandomFully != 0 {
			parts = append(parts, "--random-fully")
		}
		return rules.Target{Name: name, Args: strings.Join(parts, " ")}, nil
	}
}

// Target decodes the info of target extension name at revision rev, in a table of family. An
// extension or revision without a decoder is ErrNotDecoded.
func Target(family rules.Family, name string, rev uint32, info []byte) (rules.Target, error) {
	dec := targetDecoderFor(name)
	if dec == nil {
		return rules.Target{}, fmt.Errorf("target %s revision %d: %w", name, rev, ErrNotDecoded)
	}
	t, err := dec(family, rev, info)
	if err != nil {
		return rules.Target{}, fmt.Errorf("target %s revision %d: %w", name, rev, err)
	}
	return t, nil
}

// NAT range flags (NF_NAT_RANGE_*).
const (
	natProtoSpecified = 0x02
	natRandom         = 0x04
	natRandomFully    = 0x10
)

// decodeRedirect reads REDIRECT's range: struct nf_nat_ipv4_multi_range_compat for IPv4
// (rangesize, then flags, min_ip, max_ip, min and max port), struct nf_nat_range for IPv6 (flags,
// min_addr, max_addr, min and max port). Ports are in network order.
func decodeRedirect(family rules.Family, rev uint32, d []byte) (rules.Target, error) {
	if rev != 0 {
		return rules.Target{}, ErrNotDecoded
	}
	var flags uint32
	var lo, hi uint16
	switch family {
	case rules.IPv4:
		if err := need(d, 20); err != nil {
			return rules.Target{}, err
		}
		if n := ne.Uint32(d); n != 1 { // rangesize: the kernel refuses anything but one range
			return rules.Target{}, fmt.Errorf("REDIRECT with %d ranges", n)
		}
		flags, lo, hi = ne.Uint32(d[4:]), binary.BigEndian.Uint16(d[16:]), binary.BigEndian.Uint16(d[18:])
	case rules.IPv6:
		if err := need(d, 40); err != nil {
			return rules.Target{}, err
		}
		flags, lo, hi = ne.Uint32(d), binary.BigEndian.Uint16(d[36:]), binary.BigEndian.Uint16(d[38:])
	default:
		return rules.Target{}, errFamily(family)
	}
	var parts []string
	if flags&natProtoSpecified != 0 {
		if hi < lo {
			return rules.Target{}, fmt.Errorf("REDIRECT port range %d-%d", lo, hi)
		}
		parts = append(parts, rules.RedirectArgs(lo, hi))
	}
	if flags&natRandom != 0 {
		parts = append(parts, "--random")
	}
	if flags&natRandomFully != 0 {
		parts = append(parts, "--random-fully")
	}
	return rules.Target{Name: "REDIRECT", Args: strings.Join(parts, " ")}, nil
}

// TProxyInfo is what a TPROXY target says: where it sends a packet and the mark it sets.
type TProxyInfo struct {
	Port       uint16
	Addr       netip.Addr
	Mark, Mask uint32
}

// TProxy reads struct xt_tproxy_target_info (rev 0, IPv4: mark_mask, mark_value, laddr, lport) or
// xt_tproxy_target_info_v1 (rev 1: the same with a 16-byte laddr), for a reader that renders the
// target itself.
func TProxy(family rules.Family, rev uint32, d []byte) (TProxyInfo, error) {
	t, err := tproxyInfo(family, rev, d)
	if err != nil {
		return TProxyInfo{}, fmt.Errorf("target TPROXY revision %d: %w", rev, err)
	}
	return t, nil
}

func tproxyInfo(family rules.Family, rev uint32, d []byte) (TProxyInfo, error) {
	var t TProxyInfo
	switch rev {
	case 0:
		if family != rules.IPv4 {
			return t, ErrNotDecoded
		}
		if err := need(d, 14); err != nil {
			return t, err
		}
		t.Addr, t.Port = netip.AddrFrom4([4]byte(d[8:12])), binary.BigEndian.Uint16(d[12:])
	case 1:
		if err := need(d, 26); err != nil {
			return t, err
		}
		switch family {
		case rules.IPv4:
			t.Addr = netip.AddrFrom4([4]byte(d[8:12]))
		case rules.IPv6:
			t.Addr = netip.AddrFrom16([16]byte(d[8:24]))
		default:
			return t, errFamily(family)
		}
		t.Port = binary.BigEndian.Uint16(d[24:])
	default:
		return t, ErrNotDecoded
	}
	t.Mask, t.Mark = ne.Uint32(d[0:]), ne.Uint32(d[4:])
	return t, nil
}

func decodeTProxy(family rules.Family, rev uint32, d []byte) (rules.Target, error) {
	t, err := tproxyInfo(family, rev, d)
	if err != nil {
		return rules.Target{}, err
	}
	return rules.Target{Name: "TPROXY", Args: rules.TProxyArgs(t.Port, t.Addr, t.Mark, t.Mask)}, nil
}

// decodeMarkTarget reads struct xt_mark_tginfo2 (revision 2): mark, mask.
func decodeMarkTarget(_ rules.Family, rev uint32, d []byte) (rules.Target, error) {
	if err := revisionAndSize(rev, 2, d, 8); err != nil {
		return rules.Target{}, err
	}
	return rules.Target{Name: "MARK", Args: rules.SetMarkArgs(ne.Uint32(d[0:]), ne.Uint32(d[4:]))}, nil
}

// decodeConnmark reads struct xt_connmark_tginfo1 (ctmark, ctmask, nfmask, mode) or
// xt_connmark_tginfo2 (the same with shift_dir and shift_bits before mode).
func decodeConnmark(_ rules.Family, rev uint32, d []byte) (rules.Target, error) {
	var mode, shiftDir, shiftBits uint8
	switch rev {
	case 1:
		if err := need(d, 13); err != nil {
			return rules.Target{}, err
		}
		mode = d[12]
	case 2:
		if err := need(d, 15); err != nil {
			return rules.Target{}, err
		}
		shiftDir, shiftBits, mode = d[12], d[13], d[14]
	default:
		return rules.Target{}, ErrNotDecoded
	}
	ctmark, ctmask, nfmask := ne.Uint32(d[0:]), ne.Uint32(d[4:]), ne.Uint32(d[8:])
	var args string
	switch mode {
	case 0: // XT_CONNMARK_SET
		args = "--set-xmark " + rules.MarkValue(ctmark, ctmask)
	case 1: // XT_CONNMARK_SAVE
		args = rules.ConnMarkArgs("save", nfmask, ctmask)
	case 2: // XT_CONNMARK_RESTORE
		args = rules.ConnMarkArgs("restore", nfmask, ctmask)
	default:
		return rules.Target{}, fmt.Errorf("CONNMARK mode %d", mode)
	}
	if shiftBits != 0 {
		dir := "left"
		if shiftDir != 0 {
			dir = "right"
		}
		args += fmt.Sprintf(" --%s-shift-mark %d", dir, shiftBits)
	}
	return rules.Target{Name: "CONNMARK", Args: args}, nil
}

// CT target flags (XT_CT_*).
const (
	ctNotrack      = 0x01
	ctNotrackAlias = 0x02
	ctZoneDirOrig  = 0x04
	ctZoneDirRepl  = 0x08
	ctZoneMark     = 0x10
)

// decodeCT reads struct xt_ct_target_info (rev 0: flags, zone, ct_events, exp_events,
// helper[16]) or xt_ct_target_info_v1 (rev 1 and 2: the same plus timeout[32]); the kernel's
// own pointer after them is zeroed on the way out. `-j NOTRACK` is CT with the alias flag.
func decodeCT(_ rules.Family, rev uint32, d []byte) (rules.Target, error) {
	const helperAt, timeoutAt = 12, 28
	var timeout string
	switch rev {
	case 0:
		if err := need(d, timeoutAt); err != nil {
			return rules.Target{}, err
		}
	case 1, 2:
		if err := need(d, timeoutAt+32); err != nil {
			return rules.Target{}, err
		}
		timeout = cString(d[timeoutAt : timeoutAt+32])
	default:
		return rules.Target{}, ErrNotDecoded
	}
	flags, zone := ne.Uint16(d[0:]), ne.Uint16(d[2:])
	if flags&ctNotrackAlias != 0 {
		return rules.Target{Name: "NOTRACK"}, nil
	}
	var parts []string
	if flags&ctNotrack != 0 {
		parts = append(parts, "--notrack")
	}
	if helper := cString(d[helperAt : helperAt+16]); helper != "" {
		parts = append(parts, "--helper "+helper)
	}
	if timeout != "" {
		parts = append(parts, "--timeout "+timeout)
	}
	if ev := ne.Uint32(d[4:]); ev != 0 {
		parts = append(parts, fmt.Sprintf("--ctevents 0x%x", ev))
	}
	if ev := ne.Uint32(d[8:]); ev != 0 {
		parts = append(parts, fmt.Sprintf("--expevents 0x%x", ev))
	}
	dir := ""
	switch flags & (ctZoneDirOrig | ctZoneDirRepl) {
	case ctZoneDirOrig:
		dir = "-orig"
	case ctZoneDirRepl:
		dir = "-reply"
	}
	switch {
	case flags&ctZoneMark != 0:
		parts = append(parts, "--zone"+dir+" mark")
	case zone != 0 && dir == "":
		parts = append(parts, rules.CTZoneArgs(zone))
	case zone != 0:
		parts = append(parts, "--zone"+dir+" "+strconv.Itoa(int(zone)))
	}
	return rules.Target{Name: "CT", Args: strings.Join(parts, " ")}, nil
}
