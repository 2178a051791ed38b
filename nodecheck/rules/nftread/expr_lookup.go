package nftread

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// lookup decodes a set membership test (`tcp dport { 53, 15008 }`), or a map, kept whole.
func (d *ruleDecoder) lookup(data []byte) error {
	at := parseAttrs(data)
	setName := at.str(unix.NFTA_LOOKUP_SET)
	sreg, hasSreg := at.u32(unix.NFTA_LOOKUP_SREG)
	hasDreg := at.has(unix.NFTA_LOOKUP_DREG)
	flags, _ := at.u32(unix.NFTA_LOOKUP_FLAGS)
	if at.err != nil {
		return at.err
	}
	if !hasSreg {
		return fmt.Errorf("lookup without a register")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	not := flags&unix.NFT_LOOKUP_F_INV != 0
	if hasDreg {
		// A map or verdict map: what it yields depends on the packet; keep it whole.
		d.other("%s map @%s", src.describe(), setName)
		d.setTarget(rules.Target{Name: "?vmap"})
		return nil
	}
	set := d.ctx.set(setName)
	if set != nil {
		if kind, ok := d.portField(*src); ok && src.mask == nil && set.keyLen == 2 {
			if v, ok := portList(set); ok {
				// A port set is multiport: --dport inside, --dports outside the model.
				kind = map[rules.MatchKind]rules.MatchKind{
					rules.MatchSourcePort:      rules.MatchSourcePorts,
					rules.MatchDestinationPort: rules.MatchDestinationPorts,
				}[kind]
				d.add(kind, not, v)
				return nil
			}
		}
	}
	neg := ""
	if not {
		neg = "!= "
	}
	d.other("%s %s%s", src.describe(), neg, describeSet(setName, set))
	return nil
}

// portList renders a port set as iptables multiport does, ports ascending ("53,15008,20000:20010").
func portList(s *setInfo) (string, bool) {
	ivs, err := s.intervals()
	if err != nil || len(ivs) == 0 {
		return "", false
	}
	type pr struct{ lo, hi uint16 }
	ps := make([]pr, 0, len(ivs))
	for _, iv := range ivs {
		if len(iv[0]) != 2 || len(iv[1]) != 2 {
			return "", false
		}
		ps = append(ps, pr{binary.BigEndian.Uint16(iv[0]), binary.BigEndian.Uint16(iv[1])})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].lo < ps[j].lo })
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = rules.PortRangeValue(p.lo, p.hi)
	}
	return strings.Join(parts, ","), true
}

func describeSet(name string, s *setInfo) string {
	if s == nil {
		return "@" + name + " (set not found)"
	}
	ivs, err := s.intervals()
	if err != nil {
		return "@" + name + " (" + err.Error() + ")"
	}
	parts := make([]string, len(ivs))
	for i, iv := range ivs {
		if bytes.Equal(iv[0], iv[1]) {
			parts[i] = keyText(iv[0])
		} else {
			parts[i] = keyText(iv[0]) + "-" + keyText(iv[1])
		}
	}
	return "@" + name + " {" + strings.Join(parts, ",") + "}"
}

// keyText renders a set key: addresses and ports readably, anything else in hex.
func keyText(k []byte) string {
	switch len(k) {
	case 2:
		return fmt.Sprint(binary.BigEndian.Uint16(k))
	case 4, 16:
		if a, ok := netip.AddrFromSlice(k); ok {
			return a.String()
		}
	}
	return hex.EncodeToString(k)
}
