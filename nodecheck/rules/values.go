package rules

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// The helpers below turn a value from any backend into the one canonical text a Match or Target
// carries. Readers must use them, or equal meanings would not compare equal.

// PrefixValue renders an address with its mask as a canonical prefix ("127.0.0.1/32").
func PrefixValue(p netip.Prefix) string { return p.Masked().String() }

// ParsePrefix reads "10.0.0.0/8", "127.0.0.1" (a host) or "10.0.0.0/255.0.0.0" (the netmask form
// iptables-save prints for non-contiguous masks is refused, as Istio never writes one).
func ParsePrefix(s string) (netip.Prefix, error) {
	if addr, mask, ok := strings.Cut(s, "/"); ok {
		if strings.Contains(mask, ".") || strings.Contains(mask, ":") {
			a, err := netip.ParseAddr(addr)
			if err != nil {
				return netip.Prefix{}, fmt.Errorf("address %q: %w", s, err)
			}
			m, err := netip.ParseAddr(mask)
			if err != nil {
				return netip.Prefix{}, fmt.Errorf("netmask %q: %w", s, err)
			}
			bits, ok := MaskBits(m.AsSlice())
			if !ok {
				return netip.Prefix{}, fmt.Errorf("netmask %q is not contiguous", s)
			}
			return netip.PrefixFrom(a, bits).Masked(), nil
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("prefix %q: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address %q: %w", s, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// MaskBits returns the prefix length of a contiguous netmask, and false for any other mask.
func MaskBits(mask []byte) (int, bool) {
	bits := 0
	seenZero := false
	for _, b := range mask {
		for i := 7; i >= 0; i-- {
			if b&(1<<i) != 0 {
				if seenZero {
					return 0, false
				}
				bits++
			} else {
				seenZero = true
			}
		}
	}
	return bits, true
}

// PortRangeValue renders a port range the way iptables does: "15008" or "1000:2000".
func PortRangeValue(lo, hi uint16) string {
	if lo == hi {
		return strconv.Itoa(int(lo))
	}
	return strconv.Itoa(int(lo)) + ":" + strconv.Itoa(int(hi))
}

// ParsePortRange reads "15008", "1000:2000" or "1000-2000".
func ParsePortRange(s string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(s, ":")
	if !isRange {
		a, b, isRange = strings.Cut(s, "-")
	}
	l, err := strconv.ParseUint(a, 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("port %q: %w", s, err)
	}
	if !isRange {
		return uint16(l), uint16(l), nil
	}
	h, err := strconv.ParseUint(b, 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("port range %q: %w", s, err)
	}
	if h < l {
		return 0, 0, fmt.Errorf("port range %q ends before it starts", s)
	}
	return uint16(l), uint16(h), nil
}

// IDRangeValue renders an owner UID/GID match: "1337" or "1000-2000".
func IDRangeValue(lo, hi uint32) string {
	if lo == hi {
		return strconv.FormatUint(uint64(lo), 10)
	}
	return strconv.FormatUint(uint64(lo), 10) + "-" + strconv.FormatUint(uint64(hi), 10)
}

// MarkValue renders a mark and its mask as 0xVALUE/0xMASK; a mark without mask has mask 0xffffffff.
func MarkValue(value, mask uint32) string {
	return fmt.Sprintf("0x%x/0x%x", value, mask)
}

// ParseMark reads "1337", "0x539", "0x539/0xfff".
func ParseMark(s string) (value, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	value64, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("mark %q: %w", s, err)
	}
	mask = 0xffffffff
	if hasMask {
		mask64, err := strconv.ParseUint(m, 0, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("mark mask %q: %w", s, err)
		}
		mask = uint32(mask64)
	}
	return uint32(value64), mask, nil
}

// CTStateValue renders conntrack states sorted and comma-separated, so "RELATED,ESTABLISHED" and
// "ESTABLISHED,RELATED" are one value.
func CTStateValue(states []string) string {
	order := []string{"INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT"}
	seen := map[string]bool{}
	for _, s := range states {
		seen[strings.ToUpper(strings.TrimSpace(s))] = true
	}
	var out []string
	for _, s := range order {
		if seen[s] {
			out = append(out, s)
			delete(seen, s)
		}
	}
	rest := make([]string, 0, len(seen))
	for s := range seen {
		rest = append(rest, s)
	}
	sort.Strings(rest)
	return strings.Join(append(out, rest...), ",")
}

// RedirectArgs is the canonical option text of REDIRECT to one port (or a range).
func RedirectArgs(lo, hi uint16) string {
	if lo == 0 && hi == 0 {
		return ""
	}
	return "--to-ports " + strings.ReplaceAll(PortRangeValue(lo, hi), ":", "-")
}

// TProxyArgs is the canonical option text of TPROXY.
func TProxyArgs(port uint16, onIP netip.Addr, mark, mask uint32) string {
	ip := "0.0.0.0"
	if onIP.IsValid() {
		ip = onIP.String()
	}
	return fmt.Sprintf("--on-port %d --on-ip %s --tproxy-mark %s", port, ip, MarkValue(mark, mask))
}

// SetMarkArgs is the canonical option text of MARK (iptables' --set-mark V is --set-xmark V/0xffffffff).
func SetMarkArgs(value, mask uint32) string { return "--set-xmark " + MarkValue(value, mask) }

// ConnMarkArgs is the canonical option text of CONNMARK --save-mark or --restore-mark.
func ConnMarkArgs(op string, nfmask, ctmask uint32) string {
	return fmt.Sprintf("--%s-mark --nfmask 0x%x --ctmask 0x%x", op, nfmask, ctmask)
}

// CTZoneArgs is the canonical option text of CT --zone.
func CTZoneArgs(zone uint16) string { return "--zone " + strconv.Itoa(int(zone)) }

// ProtocolValue renders an IP protocol number as a -p value, the way rule text names it
// ("tcp", "udp", or the number), for readers that see the number (nftables' meta l4proto).
func ProtocolValue(proto uint8) string { return protocolName(strconv.Itoa(int(proto))) }
