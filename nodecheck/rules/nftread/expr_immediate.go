package nftread

import (
	"bytes"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

func (d *ruleDecoder) immediate(data []byte) error {
	var dreg uint32
	var hasDreg bool
	var value []byte
	var v verdict
	var isVerdict bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_IMMEDIATE_DREG:
			dreg, err = a.u32()
			hasDreg = true
		case unix.NFTA_IMMEDIATE_DATA:
			value, v, isVerdict, err = parseData(a.data)
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if !hasDreg {
		return fmt.Errorf("immediate without a register")
	}
	if dreg == unix.NFT_REG_VERDICT {
		if !isVerdict {
			return fmt.Errorf("immediate to the verdict register without a verdict")
		}
		d.verdict(v)
		return nil
	}
	if value == nil {
		return fmt.Errorf("immediate to register %d without a value", dreg)
	}
	return d.load(dreg, register{kind: regImm, data: value})
}

type verdict struct {
	code  int32
	chain []byte // NUL-terminated, as sent
}

// parseData reads an NFTA_DATA nest: a value or a verdict.
func parseData(b []byte) (value []byte, v verdict, isVerdict bool, err error) {
	a := attrIter{b: b}
	for a.next() {
		switch a.typ {
		case unix.NFTA_DATA_VALUE:
			return a.data, v, false, nil
		case unix.NFTA_DATA_VERDICT:
			var hasCode bool
			va := attrIter{b: a.data}
			for va.next() {
				switch va.typ {
				case unix.NFTA_VERDICT_CODE:
					c, err := va.u32()
					if err != nil {
						return nil, v, false, err
					}
					v.code, hasCode = int32(c), true
				case unix.NFTA_VERDICT_CHAIN:
					v.chain = va.data
				}
			}
			if va.err != nil {
				return nil, v, false, va.err
			}
			if !hasCode {
				return nil, v, false, fmt.Errorf("verdict without a code")
			}
			return nil, v, true, nil
		}
	}
	if a.err != nil {
		return nil, v, false, a.err
	}
	return nil, v, false, fmt.Errorf("data without a value or verdict")
}

// verdictName spells a verdict code the way iptables does.
func verdictName(code int32) string {
	switch code {
	case nfAccept:
		return "ACCEPT"
	case nfDrop:
		return "DROP"
	case nfQueue:
		return "QUEUE"
	case unix.NFT_RETURN:
		return "RETURN"
	}
	return fmt.Sprintf("?verdict%d", code)
}

func (d *ruleDecoder) verdict(v verdict) {
	switch v.code {
	case unix.NFT_CONTINUE:
		// "continue" is what a rule without a verdict does anyway.
	case unix.NFT_JUMP, unix.NFT_GOTO:
		d.setTarget(rules.Target{Name: d.ctx.chainName(string(bytes.TrimRight(v.chain, "\x00"))), Goto: v.code == unix.NFT_GOTO})
	case unix.NFT_BREAK:
		d.other("nft verdict break")
	default:
		d.setTarget(rules.Target{Name: verdictName(v.code)})
	}
}

func isVerdict(t rules.Target) bool {
	switch t.Name {
	case "ACCEPT", "DROP", "RETURN", "QUEUE":
		return true
	}
	return t.IsJump()
}
