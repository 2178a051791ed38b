package xtlegacy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// decodeTarget decodes a rule's target: a verdict, a jump or goto to a user chain, nothing (a
// rule without -j), or an extension.
func decodeTarget(l *entryLayout, family rules.Family, e entry, chainStarts map[int]string) (rules.Target, error) {
	if e.tname == standardTargetName {
		if len(e.b)-e.target < standardTargetSize || ne.Uint16(e.b[e.target:]) != standardTargetSize {
			return rules.Target{}, corrupt("standard target of size %d", ne.Uint16(e.b[e.target:]))
		}
		v, _ := standardVerdict(e)
		switch {
		case v < 0:
			return rules.Target{Name: verdictName(v)}, nil
		case int(v) == e.off+len(e.b):
			// libiptc's "fallthrough": a rule without -j continues at the next entry.
			return rules.Target{}, nil
		}
		if name, ok := chainStarts[int(v)]; ok {
			return rules.Target{Name: name, Goto: e.b[l.flags]&l.flagGoto != 0}, nil
		}
		// The kernel accepts a jump into the middle of a chain; iptables never writes one and no
		// chain name can say it.
		return rules.Target{Name: "?jump", Args: "to offset " + strconv.Itoa(int(v))}, nil
	}
	d := e.tdata
	var args string
	var ok bool
	switch e.tname {
	case "REDIRECT":
		args, ok = redirectArgs(family, e.trev, d)
	case "TPROXY":
		args, ok = tproxyArgs(family, e.trev, d)
	case "MARK":
		if ok = e.trev == 2 && len(d) >= 8; ok {
			args = rules.SetMarkArgs(ne.Uint32(d[0:]), ne.Uint32(d[4:]))
		}
	case "CONNMARK":
		args, ok = connmarkArgs(e.trev, d)
	case "CT":
		var name string
		if name, args, ok = ctTarget(e.trev, d); ok {
			return rules.Target{Name: name, Args: args}, nil
		}
	}
	if !ok {
		args = fmt.Sprintf("(rev %d)%s", e.trev, rawData(d))
	}
	return rules.Target{Name: e.tname, Args: args}, nil
}

// NAT range flags (NF_NAT_RANGE_*).
const (
	natProtoSpecified = 0x02
	natRandom         = 0x04
	natRandomFully    = 0x10
)

// redirectArgs reads REDIRECT's range: struct nf_nat_ipv4_multi_range_compat for IPv4 (rangesize,
// then flags, min_ip, max_ip, min and max port), struct nf_nat_range for IPv6 (flags, min_addr,
// max_addr, min and max port). Ports are in network order.
func redirectArgs(family rules.Family, rev uint8, d []byte) (string, bool) {
	if rev != 0 {
		return "", false
	}
	var flags uint32
	var lo, hi uint16
	switch {
	case family == rules.IPv4 && len(d) >= 20:
		if ne.Uint32(d) != 1 { // rangesize: the kernel refuses anything but one range
			return "", false
		}
		flags, lo, hi = ne.Uint32(d[4:]), binary.BigEndian.Uint16(d[16:]), binary.BigEndian.Uint16(d[18:])
	case family == rules.IPv6 && len(d) >= 40:
		flags, lo, hi = ne.Uint32(d), binary.BigEndian.Uint16(d[36:]), binary.BigEndian.Uint16(d[38:])
	default:
		return "", false
	}
	var parts []string
	if flags&natProtoSpecified != 0 {
		parts = append(parts, rules.RedirectArgs(lo, hi))
	}
	if flags&natRandom != 0 {
		parts = append(parts, "--random")
	}
	if flags&natRandomFully != 0 {
		parts = append(parts, "--random-fully")
	}
	return strings.Join(parts, " "), true
}

// tproxyArgs reads struct xt_tproxy_target_info (rev 0, IPv4: mark_mask, mark_value, laddr,
// lport) or xt_tproxy_target_info_v1 (rev 1: the same with a 16-byte laddr).
func tproxyArgs(family rules.Family, rev uint8, d []byte) (string, bool) {
	var ip netip.Addr
	var port uint16
	switch {
	case rev == 0 && family == rules.IPv4 && len(d) >= 14:
		ip, port = netip.AddrFrom4([4]byte(d[8:12])), binary.BigEndian.Uint16(d[12:])
	case rev == 1 && len(d) >= 26:
		if family == rules.IPv4 {
			ip = netip.AddrFrom4([4]byte(d[8:12]))
		} else {
			ip = netip.AddrFrom16([16]byte(d[8:24]))
		}
		port = binary.BigEndian.Uint16(d[24:])
	default:
		return "", false
	}
	return rules.TProxyArgs(port, ip, ne.Uint32(d[4:]), ne.Uint32(d[0:])), true
}

// connmarkArgs reads struct xt_connmark_tginfo1 (ctmark, ctmask, nfmask, mode) or
// xt_connmark_tginfo2 (the same with shift_dir and shift_bits before mode).
func connmarkArgs(rev uint8, d []byte) (string, bool) {
	var mode, shiftDir, shiftBits uint8
	switch {
	case rev == 1 && len(d) >= 13:
		mode = d[12]
	case rev == 2 && len(d) >= 15:
		shiftDir, shiftBits, mode = d[12], d[13], d[14]
	default:
		return "", false
	}
	ctmark, ctmask, nfmask := ne.Uint32(d[0:]), ne.Uint32(d[4:]), ne.Uint32(d[8:])
	var args string
	switch mode {
	case 0: // XT_CONNMARK_SET
		args = fmt.Sprintf("--set-xmark 0x%x/0x%x", ctmark, ctmask)
	case 1: // XT_CONNMARK_SAVE
		args = rules.ConnMarkArgs("save", nfmask, ctmask)
	case 2: // XT_CONNMARK_RESTORE
		args = rules.ConnMarkArgs("restore", nfmask, ctmask)
	default:
		return "", false
	}
	if shiftBits != 0 {
		dir := "left"
		if shiftDir != 0 {
			dir = "right"
		}
		args += fmt.Sprintf(" --%s-shift-mark %d", dir, shiftBits)
	}
	return args, true
}

// CT target flags (XT_CT_*).
const (
	ctNotrack      = 0x01
	ctNotrackAlias = 0x02
	ctZoneDirOrig  = 0x04
	ctZoneDirRepl  = 0x08
	ctZoneMark     = 0x10
)

// ctTarget reads struct xt_ct_target_info (rev 0: flags, zone, ct_events, exp_events,
// helper[16]) or xt_ct_target_info_v1 (rev 1 and 2: the same plus timeout[32]); the kernel's
// own pointer after them is zeroed on the way out. `-j NOTRACK` is CT with the alias flag.
func ctTarget(rev uint8, d []byte) (name, args string, ok bool) {
	const helperAt, timeoutAt = 12, 28
	var timeout string
	switch {
	case rev == 0 && len(d) >= timeoutAt:
	case (rev == 1 || rev == 2) && len(d) >= timeoutAt+32:
		timeout = cString(d[timeoutAt : timeoutAt+32])
	default:
		return "", "", false
	}
	flags, zone := ne.Uint16(d[0:]), ne.Uint16(d[2:])
	if flags&ctNotrackAlias != 0 {
		return "NOTRACK", "", true
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
	return "CT", strings.Join(parts, " "), true
}
