package nftread

import (
	"fmt"
)

// socket decodes a load of the packet's socket (`socket transparent`) for a later cmp.
func (d *ruleDecoder) socket(data []byte) error {
	at := parseAttrs(data)
	key, _ := at.u32(nftaSocketKey)
	dreg, hasDreg := at.u32(nftaSocketDreg)
	if at.err != nil {
		return at.err
	}
	if !hasDreg {
		return fmt.Errorf("socket without a register")
	}
	return d.load(dreg, register{kind: regSocket, key: key})
}
