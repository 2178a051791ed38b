package nftread

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func (d *ruleDecoder) bitwise(data []byte) error {
	var sreg, dreg, op uint32
	var mask, xor []byte
	var hasSreg, hasDreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_BITWISE_SREG:
			sreg, err = a.u32()
			hasSreg = true
		case unix.NFTA_BITWISE_DREG:
			dreg, err = a.u32()
			hasDreg = true
		case unix.NFTA_BITWISE_MASK:
			mask, err = dataValue(a.data)
		case unix.NFTA_BITWISE_XOR:
			xor, err = dataValue(a.data)
		case nftaBitwiseOp:
			op, err = a.u32()
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
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
