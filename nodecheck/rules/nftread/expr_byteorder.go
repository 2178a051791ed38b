package nftread

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func (d *ruleDecoder) byteorder(data []byte) error {
	var sreg, dreg, op uint32
	var hasSreg, hasDreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_BYTEORDER_SREG:
			sreg, err = a.u32()
			hasSreg = true
		case unix.NFTA_BYTEORDER_DREG:
			dreg, err = a.u32()
			hasDreg = true
		case unix.NFTA_BYTEORDER_OP:
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
		return fmt.Errorf("byteorder without registers")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	r := *src
	if op == unix.NFT_BYTEORDER_HTON && !r.hton {
		// nft converts host-order keys (meta skuid) to big endian before a range compare.
		r.hton = true
	} else {
		r = register{kind: regOpaque, desc: fmt.Sprintf("byteorder(op %d) of %s", op, src.describe())}
	}
	return d.load(dreg, r)
}
