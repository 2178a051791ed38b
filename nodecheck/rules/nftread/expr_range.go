package nftread

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// rangeExpr decodes `range`: a register between two bounds (a port or ID range).
func (d *ruleDecoder) rangeExpr(data []byte) error {
	at := parseAttrs(data)
	sreg, hasSreg := at.u32(unix.NFTA_RANGE_SREG)
	op, _ := at.u32(unix.NFTA_RANGE_OP)
	from, _ := at.value(unix.NFTA_RANGE_FROM_DATA)
	to, _ := at.value(unix.NFTA_RANGE_TO_DATA)
	if at.err != nil {
		return at.err
	}
	if !hasSreg || from == nil || to == nil {
		return fmt.Errorf("range without a register or bounds")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	if op != unix.NFT_RANGE_EQ && op != unix.NFT_RANGE_NEQ {
		return fmt.Errorf("range operator %d", op)
	}
	if !d.rangeMatch(*src, op == unix.NFT_RANGE_NEQ, from, to) {
		not := ""
		if op == unix.NFT_RANGE_NEQ {
			not = "!= "
		}
		d.other("%s %s%x-%x", src.describe(), not, from, to)
	}
	return nil
}

// rangeMatch adds the match for "register within [lo, hi]" (big-endian bounds), for the
// loads where iptables has ranges: ports and owner ids.
func (d *ruleDecoder) rangeMatch(r register, not bool, lo, hi []byte) bool {
	if r.mask != nil {
		return false
	}
	if kind, ok := d.portField(r); ok && len(lo) == 2 && len(hi) == 2 {
		l, h := binary.BigEndian.Uint16(lo), binary.BigEndian.Uint16(hi)
		if l > h {
			return false
		}
		d.add(kind, not, rules.PortRangeValue(l, h))
		return true
	}
	if r.kind == regMeta && (r.key == unix.NFT_META_SKUID || r.key == unix.NFT_META_SKGID) && len(lo) == 4 && len(hi) == 4 {
		order := binary.ByteOrder(binary.NativeEndian)
		if r.hton {
			order = binary.BigEndian
		}
		l, h := order.Uint32(lo), order.Uint32(hi)
		if l > h {
			return false
		}
		kind := rules.MatchUIDOwner
		if r.key == unix.NFT_META_SKGID {
			kind = rules.MatchGIDOwner
		}
		d.add(kind, not, rules.IDRangeValue(l, h))
		return true
	}
	return false
}
