package nftread

import (
	"fmt"
)

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
