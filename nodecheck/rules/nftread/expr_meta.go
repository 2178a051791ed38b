package nftread

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// meta decodes `meta KEY`: a load of packet metadata that a later cmp turns into a match, or
// `meta KEY set` from a register, a statement (MARK, CONNMARK --restore-mark).
func (d *ruleDecoder) meta(data []byte) error {
	at := parseAttrs(data)
	key, _ := at.u32(unix.NFTA_META_KEY)
	dreg, hasDreg := at.u32(unix.NFTA_META_DREG)
	sreg, hasSreg := at.u32(unix.NFTA_META_SREG)
	if at.err != nil {
		return at.err
	}
	switch {
	case hasDreg:
		return d.load(dreg, register{kind: regMeta, key: key})
	case hasSreg:
		src, err := d.reg(sreg)
		if err != nil {
			return err
		}
		return d.metaSet(key, *src)
	}
	return fmt.Errorf("meta %s without a register", metaKeyName(key))
}

// metaSet decodes `meta KEY set VALUE`.
func (d *ruleDecoder) metaSet(key uint32, src register) error {
	if key != unix.NFT_META_MARK {
		d.other("meta %s set %s", metaKeyName(key), src.describe())
		return nil
	}
	switch {
	case src.kind == regImm && len(src.data) == 4:
		v := binary.NativeEndian.Uint32(src.data)
		if d.out.tproxy != nil && !d.out.tproxy.markSet {
			// `tproxy to :15006 meta mark set 0x539` is iptables' TPROXY --tproxy-mark 0x539.
			d.out.tproxy.mark, d.out.tproxy.mask, d.out.tproxy.markSet = v, 0xffffffff, true
			return nil
		}
		d.setTarget(rules.Target{Name: "MARK", Args: rules.SetMarkArgs(v, 0xffffffff)})
	case src.kind == regMeta && src.key == unix.NFT_META_MARK && len(src.mask) == 4 && !src.hton:
		// meta mark set meta mark & M ^ X is MARK --set-xmark X/~M.
		m := binary.NativeEndian.Uint32(src.mask)
		x := uint32(0)
		if len(src.xor) == 4 {
			x = binary.NativeEndian.Uint32(src.xor)
		}
		d.setTarget(rules.Target{Name: "MARK", Args: rules.SetMarkArgs(x, ^m)})
	case src.kind == regCt && src.key == unix.NFT_CT_MARK && isZero(src.xor) && !src.hton:
		// meta mark set ct mark [& M] is CONNMARK --restore-mark --ctmask M.
		ctmask, ok := maskOr(src.mask, 0xffffffff)
		if !ok {
			d.other("meta mark set %s", src.describe())
			return nil
		}
		d.setTarget(rules.Target{Name: "CONNMARK", Args: rules.ConnMarkArgs("restore", 0xffffffff, ctmask)})
	default:
		d.other("meta mark set %s", src.describe())
	}
	return nil
}

func (d *ruleDecoder) metaMatch(r register, not bool, value []byte) bool {
	switch r.key {
	case unix.NFT_META_L4PROTO:
		if r.mask == nil && len(value) == 1 {
			d.add(rules.MatchProtocol, not, rules.ProtocolValue(value[0]))
			if !not {
				d.l4proto = int(value[0])
			}
			return true
		}
	case unix.NFT_META_NFPROTO:
		if r.mask == nil && len(value) == 1 {
			return d.familyMatch(not, value[0] == unix.NFPROTO_IPV4, value[0] == unix.NFPROTO_IPV6)
		}
	case unix.NFT_META_PROTOCOL:
		if r.mask == nil && len(value) == 2 {
			et := binary.BigEndian.Uint16(value)
			return d.familyMatch(not, et == unix.ETH_P_IP, et == unix.ETH_P_IPV6)
		}
	case unix.NFT_META_IIFNAME, unix.NFT_META_OIFNAME:
		if r.mask == nil {
			kind := rules.MatchInInterface
			if r.key == unix.NFT_META_OIFNAME {
				kind = rules.MatchOutInterface
			}
			d.add(kind, not, ifaceName(value))
			return true
		}
	case unix.NFT_META_MARK:
		if v, m, ok := markCompare(r, value); ok {
			d.add(rules.MatchMark, not, rules.MarkValue(v, m))
			return true
		}
	case unix.NFT_META_SKUID, unix.NFT_META_SKGID:
		if r.mask == nil && len(value) == 4 {
			return d.rangeMatch(r, not, value, value)
		}
	}
	return false
}

// familyMatch applies `meta nfproto ipv4` and the like to the rule's family.
func (d *ruleDecoder) familyMatch(not, v4, v6 bool) bool {
	if !v4 && !v6 {
		return false
	}
	if v4 != not {
		d.restrict(rules.IPv4)
	} else {
		d.restrict(rules.IPv6)
	}
	return true
}

// ifaceName reads an interface name as iptables-nft and nft compare it: NUL-terminated for an
// exact name, without the NUL for a prefix, which iptables spells with a trailing '+'.
func ifaceName(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b) + "+"
}

var metaKeyNames = map[uint32]string{
	unix.NFT_META_LEN: "length", unix.NFT_META_PROTOCOL: "protocol", unix.NFT_META_PRIORITY: "priority",
	unix.NFT_META_MARK: "mark", unix.NFT_META_IIF: "iif", unix.NFT_META_OIF: "oif",
	unix.NFT_META_IIFNAME: "iifname", unix.NFT_META_OIFNAME: "oifname", unix.NFT_META_IIFTYPE: "iiftype",
	unix.NFT_META_OIFTYPE: "oiftype", unix.NFT_META_SKUID: "skuid", unix.NFT_META_SKGID: "skgid",
	unix.NFT_META_NFTRACE: "nftrace", unix.NFT_META_RTCLASSID: "rtclassid", unix.NFT_META_SECMARK: "secmark",
	unix.NFT_META_NFPROTO: "nfproto", unix.NFT_META_L4PROTO: "l4proto", unix.NFT_META_BRI_IIFNAME: "ibrname",
	unix.NFT_META_BRI_OIFNAME: "obrname", unix.NFT_META_PKTTYPE: "pkttype", unix.NFT_META_CPU: "cpu",
	unix.NFT_META_IIFGROUP: "iifgroup", unix.NFT_META_OIFGROUP: "oifgroup", unix.NFT_META_CGROUP: "cgroup",
	unix.NFT_META_PRANDOM: "random",
}

func metaKeyName(k uint32) string {
	if n, ok := metaKeyNames[k]; ok {
		return n
	}
	return fmt.Sprintf("key%d", k)
}
