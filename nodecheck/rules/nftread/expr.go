package nftread

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"net/netip"

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
	// opaque is set, for the whole Read, once an expression's raw data went into a MatchOther:
	// data the decoder does not understand may be runtime state that changes without a ruleset
	// generation (quota's consumed bytes, last's timestamp, what dynset adds to a set), so such
	// a Result is never cached.
	opaque bool
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
		at := parseAttrs(list.data)
		name := bytes.TrimRight(at.bytes(unix.NFTA_EXPR_NAME), "\x00")
		data := at.bytes(unix.NFTA_EXPR_DATA)
		if at.err != nil {
			return decodedRule{}, fmt.Errorf("expression %q: %w", name, at.err)
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
	case "nat":
		return d.nat(data)
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
	d.opaque = true
	return nil
}

// terminalStatements decide a packet's fate; a rule ending in one must not read as a plain match.
var terminalStatements = map[string]bool{
	"reject": true, "nat": true, "masq": true, "queue": true, "fwd": true, "synproxy": true,
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

// shortHex renders raw expression data for evidence, bounded so one odd rule cannot flood a report.
func shortHex(b []byte) string {
	const max = 64
	if len(b) > max {
		return hex.EncodeToString(b[:max]) + "…"
	}
	return hex.EncodeToString(b)
}
