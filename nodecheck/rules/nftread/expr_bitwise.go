package nftread

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// bitwise decodes a mask-and-xor over a register: how prefixes and mark masks are written.
func (d *ruleDecoder) bitwise(data []byte) error {
	at := parseAttrs(data)
	sreg, hasSreg := at.u32(unix.NFTA_BITWISE_SREG)
	dreg, hasDreg := at.u32(unix.NFTA_BITWISE_DREG)
	mask, _ := at.value(unix.NFTA_BITWISE_MASK)
	xor, _ := at.value(unix.NFTA_BITWISE_XOR)
	op, _ := at.u32(nftaBitwiseOp)
	if at.err != nil {
		return at.err
	}
	if !hasSreg || !hasDreg {
		return fmt.Errorf("bitwise without registers")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	r := *src
	if op != 0 || r.mask != nil || (mask != nil && r.kind != regImm && len(mask) != int(r.loadLen())) {
		// Shifts, or a second mask on top of the first: nothing Istio writes.
		r = register{kind: regOpaque, desc: fmt.Sprintf("bitwise(op %d, mask %x, xor %x) of %s", op, mask, xor, src.describe())}
	} else {
		r.mask, r.xor = mask, xor
	}
	return d.load(dreg, r)
}
