package nftread

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// ct decodes `ct KEY`: a load of conntrack state for a later compare, or `ct KEY set` from a
// register, a statement (CONNMARK, CT --zone).
func (d *ruleDecoder) ct(data []byte) error {
	at := parseAttrs(data)
	key, _ := at.u32(unix.NFTA_CT_KEY)
	dreg, hasDreg := at.u32(unix.NFTA_CT_DREG)
	sreg, hasSreg := at.u32(unix.NFTA_CT_SREG)
	if at.err != nil {
		return at.err
	}
	var dir byte
	hasDir := at.has(unix.NFTA_CT_DIRECTION)
	if hasDir {
		b := at.bytes(unix.NFTA_CT_DIRECTION)
		if len(b) != 1 {
			return fmt.Errorf("ct direction of %d bytes", len(b))
		}
		dir = b[0]
	}
	switch {
	case hasDreg:
		r := register{kind: regCt, key: key}
		if hasDir {
			// Directional loads (ct original saddr …) are not something iptables' matches
			// Istio uses express; keep them visible, never confuse them with plain ones.
			r = register{kind: regOpaque, desc: fmt.Sprintf("ct %s %s", ctDirName(dir), ctKeyName(key))}
		}
		return d.load(dreg, r)
	case hasSreg:
		src, err := d.reg(sreg)
		if err != nil {
			return err
		}
		return d.ctSet(key, hasDir, dir, *src)
	}
	return fmt.Errorf("ct %s without a register", ctKeyName(key))
}

// ctSet decodes `ct KEY set VALUE`.
func (d *ruleDecoder) ctSet(key uint32, hasDir bool, dir byte, src register) error {
	switch {
	case key == unix.NFT_CT_MARK && !hasDir && src.kind == regMeta && src.key == unix.NFT_META_MARK &&
		isZero(src.xor) && !src.hton:
		// ct mark set meta mark [& M] is CONNMARK --save-mark --nfmask M.
		nfmask, ok := maskOr(src.mask, 0xffffffff)
		if !ok {
			break
		}
		d.setTarget(rules.Target{Name: "CONNMARK", Args: rules.ConnMarkArgs("save", nfmask, 0xffffffff)})
		return nil
	case key == unix.NFT_CT_MARK && !hasDir && src.kind == regCt && src.key == unix.NFT_CT_MARK &&
		len(src.mask) == 4 && !src.hton:
		// ct mark set ct mark & M ^ X is CONNMARK --set-xmark X/~M: istio-cni's native ambient
		// rules mark accepted connections so (`ct mark & 0xfffff000 | 0x111`, which nft encodes as
		// the same and-xor pair).
		m := binary.NativeEndian.Uint32(src.mask)
		x := uint32(0)
		if len(src.xor) == 4 {
			x = binary.NativeEndian.Uint32(src.xor)
		}
		d.setTarget(rules.Target{Name: "CONNMARK", Args: "--set-xmark " + rules.MarkValue(x, ^m)})
		return nil
	case key == unix.NFT_CT_MARK && !hasDir && src.kind == regImm && len(src.data) == 4:
		v := binary.NativeEndian.Uint32(src.data)
		d.setTarget(rules.Target{Name: "CONNMARK", Args: "--set-xmark " + rules.MarkValue(v, 0xffffffff)})
		return nil
	case key == unix.NFT_CT_ZONE && src.kind == regImm && len(src.data) == 2:
		zone := binary.NativeEndian.Uint16(src.data)
		args := rules.CTZoneArgs(zone)
		if hasDir {
			args = fmt.Sprintf("--zone-%s %d", map[byte]string{0: "orig", 1: "reply"}[dir], zone)
		}
		d.setTarget(rules.Target{Name: "CT", Args: args})
		return nil
	}
	d.other("ct %s set %s", ctKeyName(key), src.describe())
	return nil
}

func (d *ruleDecoder) ctMatch(r register, not bool, value []byte) bool {
	switch r.key {
	case unix.NFT_CT_STATE:
		if len(value) != 4 || r.hton || !isZero(r.xor) {
			return false
		}
		v := binary.NativeEndian.Uint32(value)
		if r.mask != nil {
			// ct state established,related is (state & 0x6) != 0; == 0 is its negation.
			m, ok := maskOr(r.mask, 0)
			if !ok || v != 0 {
				return false
			}
			states, ok := ctStates(m)
			if !ok {
				return false
			}
			d.add(rules.MatchCTState, !not, states)
			return true
		}
		states, ok := ctStates(v)
		if !ok {
			return false
		}
		d.add(rules.MatchCTState, not, states)
		return true
	case unix.NFT_CT_MARK:
		if v, m, ok := markCompare(r, value); ok {
			d.add(rules.MatchConnMark, not, rules.MarkValue(v, m))
			return true
		}
	}
	return false
}

// ctStates names nft's conntrack state bits.
func ctStates(bits uint32) (string, bool) {
	names := []struct {
		bit  uint32
		name string
	}{
		{nfCTStateInvalid, "INVALID"}, {nfCTStateEstablished, "ESTABLISHED"}, {nfCTStateRelated, "RELATED"},
		{nfCTStateNew, "NEW"}, {nfCTStateUntracked, "UNTRACKED"},
	}
	var out []string
	for _, n := range names {
		if bits&n.bit != 0 {
			out = append(out, n.name)
			bits &^= n.bit
		}
	}
	if bits != 0 || len(out) == 0 {
		return "", false
	}
	return rules.CTStateValue(out), true
}

var ctKeyNames = map[uint32]string{
	unix.NFT_CT_STATE: "state", unix.NFT_CT_DIRECTION: "direction", unix.NFT_CT_STATUS: "status",
	unix.NFT_CT_MARK: "mark", unix.NFT_CT_SECMARK: "secmark", unix.NFT_CT_EXPIRATION: "expiration",
	unix.NFT_CT_HELPER: "helper", unix.NFT_CT_L3PROTOCOL: "l3proto", unix.NFT_CT_SRC: "saddr",
	unix.NFT_CT_DST: "daddr", unix.NFT_CT_PROTOCOL: "protocol", unix.NFT_CT_PROTO_SRC: "proto-src",
	unix.NFT_CT_PROTO_DST: "proto-dst", unix.NFT_CT_LABELS: "label", unix.NFT_CT_ZONE: "zone",
}

func ctKeyName(k uint32) string {
	if n, ok := ctKeyNames[k]; ok {
		return n
	}
	return fmt.Sprintf("key%d", k)
}

func ctDirName(dir byte) string {
	if dir == 0 {
		return "original"
	}
	return "reply"
}
