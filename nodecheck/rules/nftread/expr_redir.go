package nftread

import (
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

func (d *ruleDecoder) redir(data []byte) error {
	var minReg, maxReg uint32
	var hasMin, hasMax bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_REDIR_REG_PROTO_MIN:
			minReg, err = a.u32()
			hasMin = true
		case unix.NFTA_REDIR_REG_PROTO_MAX:
			maxReg, err = a.u32()
			hasMax = true
		}
		// NFTA_REDIR_FLAGS (random, persistent) is left out, as rules.ParseSave leaves out
		// REDIRECT --random: neither changes where the proxy must listen.
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if !hasMin {
		d.setTarget(rules.Target{Name: "REDIRECT", Args: rules.RedirectArgs(0, 0)})
		return nil
	}
	if !hasMax {
		maxReg = minReg
	}
	lo, okLo := d.immPort(minReg)
	hi, okHi := d.immPort(maxReg)
	if !okLo || !okHi || hi < lo {
		d.other("redir to registers %d-%d holding %s, %s", minReg, maxReg, d.describeReg(minReg), d.describeReg(maxReg))
		d.setTarget(rules.Target{Name: "REDIRECT", Args: "?"})
		return nil
	}
	d.setTarget(rules.Target{Name: "REDIRECT", Args: rules.RedirectArgs(lo, hi)})
	return nil
}
