package nftread

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"net/netip"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Attributes and keys of linux/netfilter/nf_tables.h that golang.org/x/sys/unix lacks.
const (
	nftaBitwiseOp = 6 // NFTA_BITWISE_OP: absent or NFT_BITWISE_BOOL (0) for mask-and-xor

	nftaTproxyFamily  = 1 // NFTA_TPROXY_FAMILY
	nftaTproxyRegAddr = 2 // NFTA_TPROXY_REG_ADDR
	nftaTproxyRegPort = 3 // NFTA_TPROXY_REG_PORT

	nftaSocketKey  = 1 // NFTA_SOCKET_KEY
	nftaSocketDreg = 2 // NFTA_SOCKET_DREG

	nftSocketTransparent = 0 // NFT_SOCKET_TRANSPARENT

	// Verdict codes of linux/netfilter.h.
	nfDrop   = 0
	nfAccept = 1
	nfQueue  = 3

	// The conntrack state bits nft compares `ct state` with (NF_CT_STATE_*_BIT).
	nfCTStateInvalid     = 1 << 0
	nfCTStateEstablished = 1 << 1 // BIT(IP_CT_ESTABLISHED + 1)
	nfCTStateRelated     = 1 << 2
	nfCTStateNew         = 1 << 3
	nfCTStateUntracked   = 1 << 6
)

// ruleContext is what decoding a rule needs to know about its table.
type ruleContext struct {
	family    uint8                 // the table's NFPROTO_*
	chainName func(string) string   // kernel chain name → model chain name, for jumps
	set       func(string) *setInfo // sets of the table, for lookups; may return nil
}

// decodedRule is a rule before it is placed in a family's table.
type decodedRule struct {
	rule rules.Rule
	// only is the family the rule is restricted to by what it matches (meta nfproto, an ip or
	// ip6 header field, tproxy ip/ip6), or 0 when it applies to both.
	only rules.Family
	// tproxy holds TPROXY's options when the target is TPROXY: its default address depends
	// on the family the rule is rendered for (0.0.0.0 or ::).
	tproxy *tproxyTarget
}

type tproxyTarget struct {
	port       uint16
	addr       netip.Addr // invalid: the family's unspecified address
	mark, mask uint32
	markSet    bool
}

// forFamily returns the rule as it stands in family f's table. The matches are copied, so
// the rules of an inet table's two families share nothing.
func (d decodedRule) forFamily(f rules.Family) rules.Rule {
	d.rule.Matches = append([]rules.Match(nil), d.rule.Matches...)
	return d.only1(f)
}

// only1 is forFamily for a rule that goes into a single table: no copy needed.
func (d decodedRule) only1(f rules.Family) rules.Rule {
	r := d.rule
	if d.tproxy != nil {
		addr := d.tproxy.addr
		if !addr.IsValid() && f == rules.IPv6 {
			addr = netip.IPv6Unspecified()
		}
		r.Target.Args = rules.TProxyArgs(d.tproxy.port, addr, d.tproxy.mark, d.tproxy.mask)
	}
	r.Normalize()
	return r
}

type regKind uint8

const (
	regNone    regKind = iota
	regMeta            // meta KEY
	regPayload         // payload BASE OFFSET LEN
	regCt              // ct KEY
	regSocket          // socket KEY
	regImm             // an immediate value
	regOpaque          // something this decoder does not follow; desc says what
)

// register is what an nft register holds, as far as matching needs to know: where the value
// was loaded from and what bitwise or byteorder expressions did to it since.
type register struct {
	kind                 regKind
	key                  uint32
	base, offset, length uint32
	data                 []byte
	mask, xor            []byte
	hton                 bool
	desc                 string
}

// numRegisters covers NFT_REG_VERDICT, NFT_REG_1..4 and NFT_REG32_00..15.
const numRegisters = unix.NFT_REG32_15 + 1

// ruleDecoder runs a rule's expressions over a model of the registers, turning each load and
// comparison pair into a Match and each statement into the Target.
type ruleDecoder struct {
	ctx       *ruleContext
	regs      [numRegisters]register
	out       decodedRule
	hasTarget bool
	pending   *bound
	conflict  bool
	l4proto   int    // the protocol a `meta l4proto` match established, or -1
	used      uint32 // registers written by this rule, the only ones to clear for the next
}

// bound is half of a range, as iptables-nft writes `--dport 1000:2000` in older versions
// (cmp gte, then cmp lte on the same register).
type bound struct {
	reg   uint32
	lower bool
	value []byte
}

// decodeRule decodes the NFTA_RULE_EXPRESSIONS nest of a rule. Expressions it cannot follow
// become MatchOther; malformed attributes are an error.
func decodeRule(ctx *ruleContext, exprs []byte) (decodedRule, error) {
	var d ruleDecoder
	return d.decode(ctx, exprs)
}

// decode is decodeRule on a decoder reused across the rules of a Read: its register file is
// the largest thing a rule needs, and it is only reset, not allocated, per rule.
func (d *ruleDecoder) decode(ctx *ruleContext, exprs []byte) (decodedRule, error) {
	for used := d.used; used != 0; used &= used - 1 {
		d.regs[bits.TrailingZeros32(used)] = register{}
	}
	d.used = 0
	d.ctx, d.out, d.hasTarget, d.pending, d.conflict, d.l4proto = ctx, decodedRule{}, false, nil, false, -1
	// Most rules have a handful of matches: one allocation instead of a few appends.
	d.out.rule.Matches = make([]rules.Match, 0, 6)
	switch ctx.family {
	case unix.NFPROTO_IPV4:
		d.out.only = rules.IPv4
	case unix.NFPROTO_IPV6:
		d.out.only = rules.IPv6
	}
	list := attrIter{b: exprs}
	for list.next() {
		if list.typ != unix.NFTA_LIST_ELEM {
			continue
		}
		var name, data []byte
		a := attrIter{b: list.data}
		for a.next() {
			switch a.typ {
			case unix.NFTA_EXPR_NAME:
				name = bytes.TrimRight(a.data, "\x00")
			case unix.NFTA_EXPR_DATA:
				data = a.data
			}
		}
		if a.err != nil {
			return decodedRule{}, fmt.Errorf("expression %q: %w", name, a.err)
		}
		if err := d.expr(name, data); err != nil {
			return decodedRule{}, fmt.Errorf("expression %q: %w", name, err)
		}
	}
	if list.err != nil {
		return decodedRule{}, fmt.Errorf("expression list: %w", list.err)
	}
	d.flushPending()
	if d.conflict {
		d.other("matches neither IPv4 nor IPv6 (contradicting family matches)")
	}
	return d.out, nil
}

func (d *ruleDecoder) add(kind rules.MatchKind, not bool, value string) {
	d.out.rule.Matches = append(d.out.rule.Matches, rules.Match{Kind: kind, Not: not, Value: value})
}

func (d *ruleDecoder) other(format string, args ...any) {
	d.add(rules.MatchOther, false, fmt.Sprintf(format, args...))
}

// restrict records that the rule only matches packets of family f.
func (d *ruleDecoder) restrict(f rules.Family) {
	if d.out.only != 0 && d.out.only != f {
		d.conflict = true
		return
	}
	d.out.only = f
}

func (d *ruleDecoder) reg(n uint32) (*register, error) {
	if n >= numRegisters || n == unix.NFT_REG_VERDICT {
		return nil, fmt.Errorf("register %d out of range", n)
	}
	return &d.regs[n], nil
}

func (d *ruleDecoder) load(n uint32, r register) error {
	dst, err := d.reg(n)
	if err != nil {
		return err
	}
	*dst = r
	d.used |= 1 << n
	return nil
}

func (d *ruleDecoder) expr(name, data []byte) error {
	if string(name) != "cmp" {
		// A lone gte/lte half of a range stands on its own once something else follows.
		d.flushPending()
	}
	// switch on string(name) compares without allocating a string per expression.
	switch string(name) {
	case "counter":
		return nil // packet counts are not part of a rule's meaning
	case "meta":
		return d.meta(data)
	case "payload":
		return d.payload(data)
	case "ct":
		return d.ct(data)
	case "socket":
		return d.socket(data)
	case "bitwise":
		return d.bitwise(data)
	case "byteorder":
		return d.byteorder(data)
	case "immediate":
		return d.immediate(data)
	case "cmp":
		return d.cmp(data)
	case "range":
		return d.rangeExpr(data)
	case "lookup":
		return d.lookup(data)
	case "redir":
		return d.redir(data)
	case "tproxy":
		return d.tproxyExpr(data)
	case "notrack":
		d.setTarget(rules.Target{Name: "CT", Args: "--notrack"})
		return nil
	case "match":
		return d.xt(data, false)
	case "target":
		return d.xt(data, true)
	}
	if terminalStatements[string(name)] {
		d.setTarget(rules.Target{Name: "?" + string(name)})
	}
	d.other("nft %s %s", name, shortHex(data))
	return nil
}

// terminalStatements decide a packet's fate; a rule ending in one must not read as a plain match.
var terminalStatements = map[string]bool{
	"reject": true, "nat": true, "masq": true, "queue": true, "fwd": true, "synproxy": true,
}

func (d *ruleDecoder) meta(data []byte) error {
	var key, dreg, sreg uint32
	var hasDreg, hasSreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_META_KEY:
			key, err = a.u32()
		case unix.NFTA_META_DREG:
			dreg, err = a.u32()
			hasDreg = true
		case unix.NFTA_META_SREG:
			sreg, err = a.u32()
			hasSreg = true
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	switch {
	case hasDreg:
		return d.load(dreg, register{kind: regMeta, key: key})
	case hasSreg:
		src, err := d.reg(sreg)
		if err != nil {
			return err
		}
		return d.metaSet(key, *src)
	}
	return fmt.Errorf("meta %s without a register", metaKeyName(key))
}

// metaSet decodes `meta KEY set VALUE`.
func (d *ruleDecoder) metaSet(key uint32, src register) error {
	if key != unix.NFT_META_MARK {
		d.other("meta %s set %s", metaKeyName(key), src.describe())
		return nil
	}
	switch {
	case src.kind == regImm && len(src.data) == 4:
		v := binary.NativeEndian.Uint32(src.data)
		if d.out.tproxy != nil && !d.out.tproxy.markSet {
			// `tproxy to :15006 meta mark set 0x539` is iptables' TPROXY --tproxy-mark 0x539.
			d.out.tproxy.mark, d.out.tproxy.mask, d.out.tproxy.markSet = v, 0xffffffff, true
			return nil
		}
		d.setTarget(rules.Target{Name: "MARK", Args: rules.SetMarkArgs(v, 0xffffffff)})
	case src.kind == regMeta && src.key == unix.NFT_META_MARK && len(src.mask) == 4 && !src.hton:
		// meta mark set meta mark & M ^ X is MARK --set-xmark X/~M.
		m := binary.NativeEndian.Uint32(src.mask)
		x := uint32(0)
		if len(src.xor) == 4 {
			x = binary.NativeEndian.Uint32(src.xor)
		}
		d.setTarget(rules.Target{Name: "MARK", Args: rules.SetMarkArgs(x, ^m)})
	case src.kind == regCt && src.key == unix.NFT_CT_MARK && isZero(src.xor) && !src.hton:
		// meta mark set ct mark [& M] is CONNMARK --restore-mark --ctmask M.
		ctmask, ok := maskOr(src.mask, 0xffffffff)
		if !ok {
			d.other("meta mark set %s", src.describe())
			return nil
		}
		d.setTarget(rules.Target{Name: "CONNMARK", Args: rules.ConnMarkArgs("restore", 0xffffffff, ctmask)})
	default:
		d.other("meta mark set %s", src.describe())
	}
	return nil
}

func (d *ruleDecoder) payload(data []byte) error {
	var r register
	r.kind = regPayload
	var dreg uint32
	var hasDreg, hasSreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_PAYLOAD_DREG:
			dreg, err = a.u32()
			hasDreg = true
		case unix.NFTA_PAYLOAD_SREG:
			hasSreg = true
		case unix.NFTA_PAYLOAD_BASE:
			r.base, err = a.u32()
		case unix.NFTA_PAYLOAD_OFFSET:
			r.offset, err = a.u32()
		case unix.NFTA_PAYLOAD_LEN:
			r.length, err = a.u32()
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if hasSreg {
		d.other("payload set %s", r.describe())
		return nil
	}
	if !hasDreg {
		return fmt.Errorf("payload without a register")
	}
	return d.load(dreg, r)
}

func (d *ruleDecoder) ct(data []byte) error {
	var key, dreg, sreg uint32
	var hasDreg, hasSreg, hasDir bool
	var dir byte
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_CT_KEY:
			key, err = a.u32()
		case unix.NFTA_CT_DREG:
			dreg, err = a.u32()
			hasDreg = true
		case unix.NFTA_CT_SREG:
			sreg, err = a.u32()
			hasSreg = true
		case unix.NFTA_CT_DIRECTION:
			if len(a.data) != 1 {
				return fmt.Errorf("ct direction of %d bytes", len(a.data))
			}
			dir, hasDir = a.data[0], true
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	switch {
	case hasDreg:
		r := register{kind: regCt, key: key}
		if hasDir {
			// Directional loads (ct original saddr …) are not something iptables' matches
			// Istio uses express; keep them visible, never confuse them with plain ones.
			r = register{kind: regOpaque, desc: fmt.Sprintf("ct %s %s", ctDirName(dir), ctKeyName(key))}
		}
		return d.load(dreg, r)
	case hasSreg:
		src, err := d.reg(sreg)
		if err != nil {
			return err
		}
		return d.ctSet(key, hasDir, dir, *src)
	}
	return fmt.Errorf("ct %s without a register", ctKeyName(key))
}

// ctSet decodes `ct KEY set VALUE`.
func (d *ruleDecoder) ctSet(key uint32, hasDir bool, dir byte, src register) error {
	switch {
	case key == unix.NFT_CT_MARK && !hasDir && src.kind == regMeta && src.key == unix.NFT_META_MARK &&
		isZero(src.xor) && !src.hton:
		// ct mark set meta mark [& M] is CONNMARK --save-mark --nfmask M.
		nfmask, ok := maskOr(src.mask, 0xffffffff)
		if !ok {
			break
		}
		d.setTarget(rules.Target{Name: "CONNMARK", Args: rules.ConnMarkArgs("save", nfmask, 0xffffffff)})
		return nil
	case key == unix.NFT_CT_MARK && !hasDir && src.kind == regCt && src.key == unix.NFT_CT_MARK &&
		len(src.mask) == 4 && !src.hton:
		// ct mark set ct mark & M ^ X is CONNMARK --set-xmark X/~M: istio-cni's native ambient
		// rules mark accepted connections so (`ct mark & 0xfffff000 | 0x111`, which nft encodes as
		// the same and-xor pair).
		m := binary.NativeEndian.Uint32(src.mask)
		x := uint32(0)
		if len(src.xor) == 4 {
			x = binary.NativeEndian.Uint32(src.xor)
		}
		d.setTarget(rules.Target{Name: "CONNMARK", Args: "--set-xmark " + rules.MarkValue(x, ^m)})
		return nil
	case key == unix.NFT_CT_MARK && !hasDir && src.kind == regImm && len(src.data) == 4:
		v := binary.NativeEndian.Uint32(src.data)
		d.setTarget(rules.Target{Name: "CONNMARK", Args: "--set-xmark " + rules.MarkValue(v, 0xffffffff)})
		return nil
	case key == unix.NFT_CT_ZONE && src.kind == regImm && len(src.data) == 2:
		zone := binary.NativeEndian.Uint16(src.data)
		args := rules.CTZoneArgs(zone)
		if hasDir {
			args = fmt.Sprintf("--zone-%s %d", map[byte]string{0: "orig", 1: "reply"}[dir], zone)
		}
		d.setTarget(rules.Target{Name: "CT", Args: args})
		return nil
	}
	d.other("ct %s set %s", ctKeyName(key), src.describe())
	return nil
}

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

// setTarget records what the rule does. nft allows several statements in one rule, iptables
// one target. The verdict, which decides where the packet goes, is the Target; a statement
// before it (`meta mark set 0x1 accept`) is kept as "also …", anything after a verdict or a
// second statement as "then …", so nothing is lost. TPROXY's own accept (Istio's native
// `tproxy … meta mark set … accept`) is part of TPROXY.
func (d *ruleDecoder) setTarget(t rules.Target) {
	if d.out.tproxy != nil && t.Name == "ACCEPT" && !t.Goto {
		return
	}
	if !d.hasTarget {
		d.out.rule.Target = t
		d.hasTarget = true
		return
	}
	cur := d.out.rule.Target
	if isVerdict(t) && !isVerdict(cur) && d.out.tproxy == nil {
		d.other("also %s", rules.Rule{Target: cur}.Spec())
		d.out.rule.Target = t
		return
	}
	d.other("then %s", rules.Rule{Target: t}.Spec())
}

func isVerdict(t rules.Target) bool {
	switch t.Name {
	case "ACCEPT", "DROP", "RETURN", "QUEUE":
		return true
	}
	return t.IsJump()
}

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

func (d *ruleDecoder) cmp(data []byte) error {
	var sreg, op uint32
	var value []byte
	var hasSreg, hasValue bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_CMP_SREG:
			sreg, err = a.u32()
			hasSreg = true
		case unix.NFTA_CMP_OP:
			op, err = a.u32()
		case unix.NFTA_CMP_DATA:
			value, err = dataValue(a.data)
			hasValue = true
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
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

func (d *ruleDecoder) rangeExpr(data []byte) error {
	var sreg, op uint32
	var from, to []byte
	var hasSreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_RANGE_SREG:
			sreg, err = a.u32()
			hasSreg = true
		case unix.NFTA_RANGE_OP:
			op, err = a.u32()
		case unix.NFTA_RANGE_FROM_DATA:
			from, err = dataValue(a.data)
		case unix.NFTA_RANGE_TO_DATA:
			to, err = dataValue(a.data)
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if !hasSreg || from == nil || to == nil {
		return fmt.Errorf("range without a register or bounds")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	if op != unix.NFT_RANGE_EQ && op != unix.NFT_RANGE_NEQ {
		return fmt.Errorf("range operator %d", op)
	}
	if !d.rangeMatch(*src, op == unix.NFT_RANGE_NEQ, from, to) {
		not := ""
		if op == unix.NFT_RANGE_NEQ {
			not = "!= "
		}
		d.other("%s %s%x-%x", src.describe(), not, from, to)
	}
	return nil
}

// rangeMatch adds the match for "register within [lo, hi]" (big-endian bounds), for the
// loads where iptables has ranges: ports and owner ids.
func (d *ruleDecoder) rangeMatch(r register, not bool, lo, hi []byte) bool {
	if r.mask != nil {
		return false
	}
	if kind, ok := d.portField(r); ok && len(lo) == 2 && len(hi) == 2 {
		l, h := binary.BigEndian.Uint16(lo), binary.BigEndian.Uint16(hi)
		if l > h {
			return false
		}
		d.add(kind, not, rules.PortRangeValue(l, h))
		return true
	}
	if r.kind == regMeta && (r.key == unix.NFT_META_SKUID || r.key == unix.NFT_META_SKGID) && len(lo) == 4 && len(hi) == 4 {
		order := binary.ByteOrder(binary.NativeEndian)
		if r.hton {
			order = binary.BigEndian
		}
		l, h := order.Uint32(lo), order.Uint32(hi)
		if l > h {
			return false
		}
		kind := rules.MatchUIDOwner
		if r.key == unix.NFT_META_SKGID {
			kind = rules.MatchGIDOwner
		}
		d.add(kind, not, rules.IDRangeValue(l, h))
		return true
	}
	return false
}

func (d *ruleDecoder) lookup(data []byte) error {
	var setName string
	var sreg, flags uint32
	var hasSreg, hasDreg bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case unix.NFTA_LOOKUP_SET:
			setName = a.str()
		case unix.NFTA_LOOKUP_SREG:
			sreg, err = a.u32()
			hasSreg = true
		case unix.NFTA_LOOKUP_DREG:
			hasDreg = true
		case unix.NFTA_LOOKUP_FLAGS:
			flags, err = a.u32()
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	if !hasSreg {
		return fmt.Errorf("lookup without a register")
	}
	src, err := d.reg(sreg)
	if err != nil {
		return err
	}
	not := flags&unix.NFT_LOOKUP_F_INV != 0
	if hasDreg {
		// A map or verdict map: what it yields depends on the packet; keep it whole.
		d.other("%s map @%s", src.describe(), setName)
		d.setTarget(rules.Target{Name: "?vmap"})
		return nil
	}
	set := d.ctx.set(setName)
	if set != nil {
		if kind, ok := d.portField(*src); ok && src.mask == nil && set.keyLen == 2 {
			if v, ok := portList(set); ok {
				// A port set is multiport: --dport inside, --dports outside the model.
				kind = map[rules.MatchKind]rules.MatchKind{
					rules.MatchSourcePort:      rules.MatchSourcePorts,
					rules.MatchDestinationPort: rules.MatchDestinationPorts,
				}[kind]
				d.add(kind, not, v)
				return nil
			}
		}
	}
	neg := ""
	if not {
		neg = "!= "
	}
	d.other("%s %s%s", src.describe(), neg, describeSet(setName, set))
	return nil
}

// portList renders a port set as iptables multiport does, ports ascending ("53,15008,20000:20010").
func portList(s *setInfo) (string, bool) {
	ivs, err := s.intervals()
	if err != nil || len(ivs) == 0 {
		return "", false
	}
	type pr struct{ lo, hi uint16 }
	ps := make([]pr, 0, len(ivs))
	for _, iv := range ivs {
		if len(iv[0]) != 2 || len(iv[1]) != 2 {
			return "", false
		}
		ps = append(ps, pr{binary.BigEndian.Uint16(iv[0]), binary.BigEndian.Uint16(iv[1])})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].lo < ps[j].lo })
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = rules.PortRangeValue(p.lo, p.hi)
	}
	return strings.Join(parts, ","), true
}

func describeSet(name string, s *setInfo) string {
	if s == nil {
		return "@" + name + " (set not found)"
	}
	ivs, err := s.intervals()
	if err != nil {
		return "@" + name + " (" + err.Error() + ")"
	}
	parts := make([]string, len(ivs))
	for i, iv := range ivs {
		if bytes.Equal(iv[0], iv[1]) {
			parts[i] = keyText(iv[0])
		} else {
			parts[i] = keyText(iv[0]) + "-" + keyText(iv[1])
		}
	}
	return "@" + name + " {" + strings.Join(parts, ",") + "}"
}

// keyText renders a set key: addresses and ports readably, anything else in hex.
func keyText(k []byte) string {
	switch len(k) {
	case 2:
		return fmt.Sprint(binary.BigEndian.Uint16(k))
	case 4, 16:
		if a, ok := netip.AddrFromSlice(k); ok {
			return a.String()
		}
	}
	return hex.EncodeToString(k)
}

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

// immPort reads a port an immediate expression put in a register (network byte order).
func (d *ruleDecoder) immPort(n uint32) (uint16, bool) {
	if n >= numRegisters {
		return 0, false
	}
	r := d.regs[n]
	if r.kind != regImm || len(r.data) != 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(r.data), true
}

func (d *ruleDecoder) describeReg(n uint32) string {
	if n >= numRegisters {
		return fmt.Sprintf("register %d", n)
	}
	return d.regs[n].describe()
}

func (d *ruleDecoder) tproxyExpr(data []byte) error {
	var fam, addrReg, portReg uint32
	var hasAddr, hasPort bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case nftaTproxyFamily:
			fam, err = a.u32()
		case nftaTproxyRegAddr:
			addrReg, err = a.u32()
			hasAddr = true
		case nftaTproxyRegPort:
			portReg, err = a.u32()
			hasPort = true
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
	}
	switch fam {
	case unix.NFPROTO_IPV4:
		d.restrict(rules.IPv4)
	case unix.NFPROTO_IPV6:
		d.restrict(rules.IPv6)
	}
	t := &tproxyTarget{}
	ok := true
	if hasPort {
		t.port, ok = d.immPort(portReg)
	}
	if hasAddr && ok {
		r := d.regs[0]
		if addrReg < numRegisters {
			r = d.regs[addrReg]
		}
		addr, valid := netip.AddrFromSlice(r.data)
		ok = r.kind == regImm && valid
		t.addr = addr
	}
	if !ok {
		d.other("tproxy from registers addr %d port %d", addrReg, portReg)
		d.setTarget(rules.Target{Name: "?tproxy"})
		return nil
	}
	if d.hasTarget {
		d.other("then tproxy")
		return nil
	}
	d.out.tproxy = t
	d.setTarget(rules.Target{Name: "TPROXY"})
	return nil
}

// match turns "register OP value" (== or !=) into a Match, and reports false when the
// register holds something iptables has no option for.
func (d *ruleDecoder) match(r register, not bool, value []byte) bool {
	switch r.kind {
	case regMeta:
		return d.metaMatch(r, not, value)
	case regPayload:
		return d.payloadMatch(r, not, value)
	case regCt:
		return d.ctMatch(r, not, value)
	case regSocket:
		if r.key == nftSocketTransparent && r.mask == nil && len(value) == 1 && value[0] == 1 && !not {
			d.add(rules.MatchSocket, false, "--transparent")
			return true
		}
	}
	return false
}

func (d *ruleDecoder) metaMatch(r register, not bool, value []byte) bool {
	switch r.key {
	case unix.NFT_META_L4PROTO:
		if r.mask == nil && len(value) == 1 {
			d.add(rules.MatchProtocol, not, rules.ProtocolValue(value[0]))
			if !not {
				d.l4proto = int(value[0])
			}
			return true
		}
	case unix.NFT_META_NFPROTO:
		if r.mask == nil && len(value) == 1 {
			return d.familyMatch(not, value[0] == unix.NFPROTO_IPV4, value[0] == unix.NFPROTO_IPV6)
		}
	case unix.NFT_META_PROTOCOL:
		if r.mask == nil && len(value) == 2 {
			et := binary.BigEndian.Uint16(value)
			return d.familyMatch(not, et == unix.ETH_P_IP, et == unix.ETH_P_IPV6)
		}
	case unix.NFT_META_IIFNAME, unix.NFT_META_OIFNAME:
		if r.mask == nil {
			kind := rules.MatchInInterface
			if r.key == unix.NFT_META_OIFNAME {
				kind = rules.MatchOutInterface
			}
			d.add(kind, not, ifaceName(value))
			return true
		}
	case unix.NFT_META_MARK:
		if v, m, ok := markCompare(r, value); ok {
			d.add(rules.MatchMark, not, rules.MarkValue(v, m))
			return true
		}
	case unix.NFT_META_SKUID, unix.NFT_META_SKGID:
		if r.mask == nil && len(value) == 4 {
			return d.rangeMatch(r, not, value, value)
		}
	}
	return false
}

// familyMatch applies `meta nfproto ipv4` and the like to the rule's family.
func (d *ruleDecoder) familyMatch(not, v4, v6 bool) bool {
	if !v4 && !v6 {
		return false
	}
	if v4 != not {
		d.restrict(rules.IPv4)
	} else {
		d.restrict(rules.IPv6)
	}
	return true
}

// ifaceName reads an interface name as iptables-nft and nft compare it: NUL-terminated for an
// exact name, without the NUL for a prefix, which iptables spells with a trailing '+'.
func ifaceName(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b) + "+"
}

// markCompare reads "(mark & M) == V" for meta mark and ct mark, which are host-order u32.
func markCompare(r register, value []byte) (v, m uint32, ok bool) {
	if len(value) != 4 || r.hton || !isZero(r.xor) {
		return 0, 0, false
	}
	m, ok = maskOr(r.mask, 0xffffffff)
	return binary.NativeEndian.Uint32(value), m, ok
}

func maskOr(mask []byte, def uint32) (uint32, bool) {
	if mask == nil {
		return def, true
	}
	if len(mask) != 4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(mask), true
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// l3 is the family whose headers a network-header payload reads: the table's, or for inet
// tables the one an earlier `meta nfproto` established.
func (d *ruleDecoder) l3() rules.Family {
	if d.conflict {
		return 0
	}
	return d.out.only
}

// portField says whether the register holds a transport-header port (th sport/dport).
func (d *ruleDecoder) portField(r register) (rules.MatchKind, bool) {
	if r.kind != regPayload || r.base != unix.NFT_PAYLOAD_TRANSPORT_HEADER || r.length != 2 {
		return 0, false
	}
	switch r.offset {
	case 0:
		return rules.MatchSourcePort, true
	case 2:
		return rules.MatchDestinationPort, true
	}
	return 0, false
}

func (d *ruleDecoder) payloadMatch(r register, not bool, value []byte) bool {
	if kind, ok := d.portField(r); ok {
		if r.mask != nil || len(value) != 2 {
			return false
		}
		p := binary.BigEndian.Uint16(value)
		d.add(kind, not, rules.PortRangeValue(p, p))
		return true
	}
	if r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && r.offset == 13 && r.length == 1 && d.l4proto == unix.IPPROTO_TCP &&
		len(value) == 1 && len(r.mask) == 1 && isZero(r.xor) {
		// iptables-nft writes --tcp-flags (and --syn) natively: (flags & MASK) == COMP.
		d.add(rules.MatchOther, false, tcpFlagsOption(not, r.mask[0], value[0]))
		return true
	}
	if r.base != unix.NFT_PAYLOAD_NETWORK_HEADER {
		return false
	}
	var saddr, daddr, proto uint32
	var size int
	switch d.l3() {
	case rules.IPv4:
		saddr, daddr, proto, size = 12, 16, 9, 4
	case rules.IPv6:
		saddr, daddr, proto, size = 8, 24, 6, 16
	default:
		return false
	}
	switch {
	case r.offset == proto && r.length == 1 && r.mask == nil && len(value) == 1:
		d.add(rules.MatchProtocol, not, rules.ProtocolValue(value[0]))
		if !not {
			d.l4proto = int(value[0])
		}
		return true
	case (r.offset == saddr || r.offset == daddr) && r.length >= 1 && int(r.length) <= size && len(value) == int(r.length):
		pfx, ok := prefixOf(value, r.mask, r.xor, size)
		if !ok {
			return false
		}
		kind := rules.MatchSource
		if r.offset == daddr {
			kind = rules.MatchDestination
		}
		d.add(kind, not, rules.PrefixValue(pfx))
		return true
	}
	return false
}

// tcpFlagsOption spells a TCP flags test as iptables-save does ("--tcp-flags FIN,SYN,RST,ACK SYN",
// which is also what --syn is saved as); the model has no kind for it, so it is MatchOther.
func tcpFlagsOption(not bool, mask, comp byte) string {
	names := func(bits byte) string {
		if bits == 0 {
			return "NONE"
		}
		var out []string
		for i, n := range []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"} {
			if bits&(1<<i) != 0 {
				out = append(out, n)
			}
		}
		return strings.Join(out, ",")
	}
	neg := ""
	if not {
		neg = "! "
	}
	return neg + "--tcp-flags " + names(mask) + " " + names(comp)
}

// prefixOf reads an address compared on its first len(value) bytes, under an optional
// contiguous mask of the same length: both iptables-nft and nft load only the bytes a prefix
// covers (10.0.0.0/8 is a 1-byte load) and mask the last partial byte.
func prefixOf(value, mask, xor []byte, size int) (netip.Prefix, bool) {
	if !isZero(xor) {
		return netip.Prefix{}, false
	}
	bits := len(value) * 8
	if mask != nil {
		if len(mask) != len(value) {
			return netip.Prefix{}, false
		}
		var ok bool
		if bits, ok = rules.MaskBits(mask); !ok {
			return netip.Prefix{}, false
		}
	}
	full := make([]byte, size)
	copy(full, value)
	addr, ok := netip.AddrFromSlice(full)
	if !ok {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, bits), true
}

func (d *ruleDecoder) ctMatch(r register, not bool, value []byte) bool {
	switch r.key {
	case unix.NFT_CT_STATE:
		if len(value) != 4 || r.hton || !isZero(r.xor) {
			return false
		}
		v := binary.NativeEndian.Uint32(value)
		if r.mask != nil {
			// ct state established,related is (state & 0x6) != 0; == 0 is its negation.
			m, ok := maskOr(r.mask, 0)
			if !ok || v != 0 {
				return false
			}
			states, ok := ctStates(m)
			if !ok {
				return false
			}
			d.add(rules.MatchCTState, !not, states)
			return true
		}
		states, ok := ctStates(v)
		if !ok {
			return false
		}
		d.add(rules.MatchCTState, not, states)
		return true
	case unix.NFT_CT_MARK:
		if v, m, ok := markCompare(r, value); ok {
			d.add(rules.MatchConnMark, not, rules.MarkValue(v, m))
			return true
		}
	}
	return false
}

// ctStates names nft's conntrack state bits.
func ctStates(bits uint32) (string, bool) {
	names := []struct {
		bit  uint32
		name string
	}{
		{nfCTStateInvalid, "INVALID"}, {nfCTStateEstablished, "ESTABLISHED"}, {nfCTStateRelated, "RELATED"},
		{nfCTStateNew, "NEW"}, {nfCTStateUntracked, "UNTRACKED"},
	}
	var out []string
	for _, n := range names {
		if bits&n.bit != 0 {
			out = append(out, n.name)
			bits &^= n.bit
		}
	}
	if bits != 0 || len(out) == 0 {
		return "", false
	}
	return rules.CTStateValue(out), true
}

// loadLen is the length of the value a load puts in a register, when known.
func (r register) loadLen() uint32 {
	switch r.kind {
	case regPayload:
		return r.length
	case regMeta:
		switch r.key {
		case unix.NFT_META_IIFNAME, unix.NFT_META_OIFNAME:
			return 16
		case unix.NFT_META_L4PROTO, unix.NFT_META_NFPROTO, unix.NFT_META_PKTTYPE:
			return 1
		case unix.NFT_META_PROTOCOL, unix.NFT_META_IIFTYPE, unix.NFT_META_OIFTYPE:
			return 2
		}
		return 4
	case regCt:
		return 4
	}
	return 0
}

// describe says what the register holds, for MatchOther text.
func (r register) describe() string {
	var s string
	switch r.kind {
	case regMeta:
		s = "meta " + metaKeyName(r.key)
	case regPayload:
		s = payloadName(r)
	case regCt:
		s = "ct " + ctKeyName(r.key)
	case regSocket:
		s = fmt.Sprintf("socket key %d", r.key)
	case regImm:
		s = "value " + hex.EncodeToString(r.data)
	case regOpaque:
		s = r.desc
	default:
		return "an unset register"
	}
	if r.mask != nil {
		s += fmt.Sprintf(" & %x", r.mask)
	}
	if !isZero(r.xor) {
		s += fmt.Sprintf(" ^ %x", r.xor)
	}
	if r.hton {
		s += " (hton)"
	}
	return s
}

var metaKeyNames = map[uint32]string{
	unix.NFT_META_LEN: "length", unix.NFT_META_PROTOCOL: "protocol", unix.NFT_META_PRIORITY: "priority",
	unix.NFT_META_MARK: "mark", unix.NFT_META_IIF: "iif", unix.NFT_META_OIF: "oif",
	unix.NFT_META_IIFNAME: "iifname", unix.NFT_META_OIFNAME: "oifname", unix.NFT_META_IIFTYPE: "iiftype",
	unix.NFT_META_OIFTYPE: "oiftype", unix.NFT_META_SKUID: "skuid", unix.NFT_META_SKGID: "skgid",
	unix.NFT_META_NFTRACE: "nftrace", unix.NFT_META_RTCLASSID: "rtclassid", unix.NFT_META_SECMARK: "secmark",
	unix.NFT_META_NFPROTO: "nfproto", unix.NFT_META_L4PROTO: "l4proto", unix.NFT_META_BRI_IIFNAME: "ibrname",
	unix.NFT_META_BRI_OIFNAME: "obrname", unix.NFT_META_PKTTYPE: "pkttype", unix.NFT_META_CPU: "cpu",
	unix.NFT_META_IIFGROUP: "iifgroup", unix.NFT_META_OIFGROUP: "oifgroup", unix.NFT_META_CGROUP: "cgroup",
	unix.NFT_META_PRANDOM: "random",
}

func metaKeyName(k uint32) string {
	if n, ok := metaKeyNames[k]; ok {
		return n
	}
	return fmt.Sprintf("key%d", k)
}

var ctKeyNames = map[uint32]string{
	unix.NFT_CT_STATE: "state", unix.NFT_CT_DIRECTION: "direction", unix.NFT_CT_STATUS: "status",
	unix.NFT_CT_MARK: "mark", unix.NFT_CT_SECMARK: "secmark", unix.NFT_CT_EXPIRATION: "expiration",
	unix.NFT_CT_HELPER: "helper", unix.NFT_CT_L3PROTOCOL: "l3proto", unix.NFT_CT_SRC: "saddr",
	unix.NFT_CT_DST: "daddr", unix.NFT_CT_PROTOCOL: "protocol", unix.NFT_CT_PROTO_SRC: "proto-src",
	unix.NFT_CT_PROTO_DST: "proto-dst", unix.NFT_CT_LABELS: "label", unix.NFT_CT_ZONE: "zone",
}

func ctKeyName(k uint32) string {
	if n, ok := ctKeyNames[k]; ok {
		return n
	}
	return fmt.Sprintf("key%d", k)
}

func ctDirName(dir byte) string {
	if dir == 0 {
		return "original"
	}
	return "reply"
}

// payloadName names the header fields Istio's rules load, and spells any other load by position.
func payloadName(r register) string {
	switch {
	case r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && r.offset == 0 && r.length == 2:
		return "th sport"
	case r.base == unix.NFT_PAYLOAD_TRANSPORT_HEADER && r.offset == 2 && r.length == 2:
		return "th dport"
	}
	return fmt.Sprintf("payload %s+%d/%d", payloadBaseName(r.base), r.offset, r.length)
}

func payloadBaseName(b uint32) string {
	switch b {
	case unix.NFT_PAYLOAD_LL_HEADER:
		return "link"
	case unix.NFT_PAYLOAD_NETWORK_HEADER:
		return "network"
	case unix.NFT_PAYLOAD_TRANSPORT_HEADER:
		return "transport"
	}
	return fmt.Sprintf("base%d", b)
}

// shortHex renders raw expression data for evidence, bounded so one odd rule cannot flood a report.
func shortHex(b []byte) string {
	const max = 64
	if len(b) > max {
		return hex.EncodeToString(b[:max]) + "…"
	}
	return hex.EncodeToString(b)
}
