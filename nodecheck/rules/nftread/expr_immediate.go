package nftread

import (
	"bytes"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// immediate decodes a constant put into a register, or into the verdict register: the rule's
// verdict or jump.
func (d *ruleDecoder) immediate(data []byte) error {
	at := parseAttrs(data)
	dreg, hasDreg := at.u32(unix.NFTA_IMMEDIATE_DREG)
	if at.err != nil {
		return at.err
	}
	var value []byte
	var v verdict
	var isVerdict bool
	if at.has(unix.NFTA_IMMEDIATE_DATA) {
		var err error
		if value, v, isVerdict, err = parseData(at.bytes(unix.NFTA_IMMEDIATE_DATA)); err != nil {
			return err
		}
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
			vt := parseAttrs(a.data)
			code, hasCode := vt.u32(unix.NFTA_VERDICT_CODE)
			if vt.err != nil {
				return nil, v, false, vt.err
			}
			if !hasCode {
				return nil, v, false, fmt.Errorf("verdict without a code")
			}
			v.code, v.chain = int32(code), vt.bytes(unix.NFTA_VERDICT_CHAIN)
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
