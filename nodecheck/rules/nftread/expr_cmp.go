package nftread

import (
	"encoding/hex"
	"fmt"

	"golang.org/x/sys/unix"
)

// cmp operators (enum nft_cmp_ops).
const (
	cmpEq  = unix.NFT_CMP_EQ
	cmpNeq = unix.NFT_CMP_NEQ
	cmpLt  = unix.NFT_CMP_LT
	cmpLte = unix.NFT_CMP_LTE
	cmpGt  = unix.NFT_CMP_GT
	cmpGte = unix.NFT_CMP_GTE
)

var cmpNames = map[uint32]string{cmpEq: "==", cmpNeq: "!=", cmpLt: "<", cmpLte: "<=", cmpGt: ">", cmpGte: ">="}

// cmp decodes a comparison of a register with a value: with the load before it, a match. The
// gte and lte halves of an older iptables-nft port range are paired into one.
func (d *ruleDecoder) cmp(data []byte) error {
	at := parseAttrs(data)
	sreg, hasSreg := at.u32(unix.NFTA_CMP_SREG)
	op, _ := at.u32(unix.NFTA_CMP_OP)
	value, hasValue := at.value(unix.NFTA_CMP_DATA)
	if at.err != nil {
		return at.err
	}
	if !hasSreg || !hasValue {
		return fmt.Errorf("cmp without a register or value")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	r := *src
	switch op {
	case cmpEq, cmpNeq:
		d.flushPending()
		if !d.match(r, op == cmpNeq, value) {
			d.other("%s %s %s", r.describe(), cmpNames[op], hex.EncodeToString(value))
		}
	case cmpGte, cmpGt, cmpLte, cmpLt:
		b := &bound{reg: sreg, lower: op == cmpGte || op == cmpGt, value: value}
		if (op == cmpGt || op == cmpLt) && !b.adjust(op == cmpGt) {
			d.flushPending()
			d.other("%s %s %s", r.describe(), cmpNames[op], hex.EncodeToString(value))
			return nil
		}
		if p := d.pending; p != nil && p.reg == sreg && p.lower != b.lower {
			d.pending = nil
			lo, hi := p.value, b.value
			if !p.lower {
				lo, hi = hi, lo
			}
			if !d.rangeMatch(r, false, lo, hi) {
				d.other("%s in %x-%x", r.describe(), lo, hi)
			}
			return nil
		}
		d.flushPending()
		d.pending = b
	default:
		return fmt.Errorf("cmp operator %d", op)
	}
	return nil
}

// adjust turns a strict bound into an inclusive one (> 999 is >= 1000).
func (b *bound) adjust(up bool) bool {
	v := append([]byte(nil), b.value...)
	for i := len(v) - 1; i >= 0; i-- {
		if up {
			if v[i] < 0xff {
				v[i]++
				b.value = v
				return true
			}
			v[i] = 0
		} else {
			if v[i] > 0 {
				v[i]--
				b.value = v
				return true
			}
			v[i] = 0xff
		}
	}
	return false
}

// flushPending turns a half range into an open range (--dport 1024: is 1024:65535).
func (d *ruleDecoder) flushPending() {
	p := d.pending
	if p == nil {
		return
	}
	d.pending = nil
	r := d.regs[p.reg]
	edge := make([]byte, len(p.value))
	lo, hi := edge, p.value
	if p.lower {
		for i := range edge {
			edge[i] = 0xff
		}
		lo, hi = p.value, edge
	}
	if r.kind == regPayload && r.length == 2 && r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && d.rangeMatch(r, false, lo, hi) {
		return
	}
	op := "<="
	if p.lower {
		op = ">="
	}
	d.other("%s %s %s", r.describe(), op, hex.EncodeToString(p.value))
}
