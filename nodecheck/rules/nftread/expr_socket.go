package nftread

import (
	"fmt"
)

func (d *ruleDecoder) socket(data []byte) error {
	var key, dreg uint32
	var hasDreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case nftaSocketKey:
			key, err = a.u32()
		case nftaSocketDreg:
			dreg, err = a.u32()
			hasDreg = true
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if !hasDreg {
		return fmt.Errorf("socket without a register")
	}
	return d.load(dreg, register{kind: regSocket, key: key})
}
