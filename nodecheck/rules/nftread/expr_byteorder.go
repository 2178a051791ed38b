package nftread

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// byteorder decodes the conversion nft puts before comparing a host-order key (meta skuid) as a
// range.
func (d *ruleDecoder) byteorder(data []byte) error {
	at := parseAttrs(data)
	sreg, hasSreg := at.u32(unix.NFTA_BYTEORDER_SREG)
	dreg, hasDreg := at.u32(unix.NFTA_BYTEORDER_DREG)
	op, _ := at.u32(unix.NFTA_BYTEORDER_OP)
	if at.err != nil {
		return at.err
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
