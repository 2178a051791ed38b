package nftread

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// tableKind says whether and how a table is read.
type tableKind uint8

const (
	tableOther  tableKind = iota // not ours: listed in OtherTables only
	tableNft                     // made by iptables-nft: ip/ip6 nat, mangle, raw, filter, security
	tableNative                  // Istio's own: a name starting "istio-"
)

// tableID names a table in the kernel: nftables table names are unique per family only.
type tableID struct {
	family uint8
	name   string
}

func (t tableID) String() string { return familyName(t.family) + " " + t.name }

type tableInfo struct {
	id   tableID
	kind tableKind
}

// xtablesTables are the tables iptables-nft makes, in the order iptables-nft-save prints them
// (its table enum: mangle, security, raw, filter, nat), which is also the order of Save().
var xtablesTables = []string{"mangle", "security", "raw", "filter", "nat"}

// xtablesBuiltins are each table's built-in chains in hook order. iptables-nft creates a base
// chain only when a rule needs it, but iptables-nft-save prints all of them with policy ACCEPT;
// an absent base chain means exactly that, so Read fills them in the same way.
var xtablesBuiltins = map[string][]string{
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
	"raw":      {"PREROUTING", "OUTPUT"},
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// hookChains names the netfilter hooks (NF_INET_*) as iptables names the chains on them.
var hookChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING", "INGRESS"}

func classifyTable(id tableID) tableKind {
	switch {
	case (id.family == unix.NFPROTO_IPV4 || id.family == unix.NFPROTO_IPV6) && isXtablesTable(id.name):
		return tableNft
	case (id.family == unix.NFPROTO_INET || id.family == unix.NFPROTO_IPV4 || id.family == unix.NFPROTO_IPV6) &&
		strings.HasPrefix(id.name, "istio-"):
		return tableNative
	}
	return tableOther
}

func isXtablesTable(name string) bool {
	for _, t := range xtablesTables {
		if t == name {
			return true
		}
	}
	return false
}

func familyName(f uint8) string {
	switch f {
	case unix.NFPROTO_INET:
		return "inet"
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	case unix.NFPROTO_ARP:
		return "arp"
	case unix.NFPROTO_BRIDGE:
		return "bridge"
	case unix.NFPROTO_NETDEV:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

// msgFamily splits a message payload into its nfgenmsg family and its attributes.
func msgFamily(msg []byte) (uint8, []byte, error) {
	if len(msg) < 4 {
		return 0, nil, fmt.Errorf("nf_tables message of %d bytes, shorter than its header", len(msg))
	}
	return msg[0], msg[4:], nil
}

func parseTables(msgs [][]byte) ([]tableInfo, error) {
	out := make([]tableInfo, 0, len(msgs))
	for _, m := range msgs {
		fam, attrs, err := msgFamily(m)
		if err != nil {
			return nil, fmt.Errorf("table: %w", err)
		}
		at := parseAttrs(attrs)
		if at.err != nil {
			return nil, fmt.Errorf("table: %w", at.err)
		}
		id := tableID{family: fam, name: at.str(unix.NFTA_TABLE_NAME)}
		if id.name == "" {
			return nil, errors.New("table without a name")
		}
		out = append(out, tableInfo{id: id, kind: classifyTable(id)})
	}
	return out, nil
}

type chainInfo struct {
	table  tableID
	name   string
	base   bool
	hook   uint32
	policy string
}

func parseChains(msgs [][]byte) ([]chainInfo, error) {
	out := make([]chainInfo, 0, len(msgs))
	for _, m := range msgs {
		fam, attrs, err := msgFamily(m)
		if err != nil {
			return nil, fmt.Errorf("chain: %w", err)
		}
		at := parseAttrs(attrs)
		c := chainInfo{table: tableID{family: fam, name: at.str(unix.NFTA_CHAIN_TABLE)}, name: at.str(unix.NFTA_CHAIN_NAME)}
		if at.err != nil {
			return nil, fmt.Errorf("chain %s: %w", c.name, at.err)
		}
		if c.base = at.has(unix.NFTA_CHAIN_HOOK); c.base {
			hook := parseAttrs(at.bytes(unix.NFTA_CHAIN_HOOK))
			if c.hook, _ = hook.u32(unix.NFTA_HOOK_HOOKNUM); hook.err != nil {
				return nil, fmt.Errorf("chain %s hook: %w", c.name, hook.err)
			}
		}
		if p, ok := at.u32(unix.NFTA_CHAIN_POLICY); ok {
			c.policy = verdictName(int32(p))
		} else if at.err != nil {
			return nil, fmt.Errorf("chain %s policy: %w", c.name, at.err)
		}
		if c.name == "" || c.table.name == "" {
			return nil, errors.New("chain without a name or table")
		}
		out = append(out, c)
	}
	return out, nil
}

// setInfo is a set with its elements, for lookups (`tcp dport != { 53, 15008 }`).
type setInfo struct {
	table    tableID
	name     string
	flags    uint32
	keyLen   uint32
	elements []setElement
}

type setElement struct {
	key, keyEnd []byte
	flags       uint32
}

func parseSets(msgs [][]byte) ([]*setInfo, error) {
	out := make([]*setInfo, 0, len(msgs))
	for _, m := range msgs {
		fam, attrs, err := msgFamily(m)
		if err != nil {
			return nil, fmt.Errorf("set: %w", err)
		}
		at := parseAttrs(attrs)
		s := &setInfo{table: tableID{family: fam, name: at.str(unix.NFTA_SET_TABLE)}, name: at.str(unix.NFTA_SET_NAME)}
		if at.err != nil {
			return nil, fmt.Errorf("set %s: %w", s.name, at.err)
		}
		if s.flags, _ = at.u32(unix.NFTA_SET_FLAGS); at.err != nil {
			return nil, fmt.Errorf("set %s flags: %w", s.name, at.err)
		}
		if s.keyLen, _ = at.u32(unix.NFTA_SET_KEY_LEN); at.err != nil {
			return nil, fmt.Errorf("set %s key length: %w", s.name, at.err)
		}
		if s.name == "" || s.table.name == "" {
			return nil, errors.New("set without a name or table")
		}
		out = append(out, s)
	}
	return out, nil
}

// nftaSetElemKeyEnd is NFTA_SET_ELEM_KEY_END (linux/netfilter/nf_tables.h), which x/sys/unix
// lacks: the end of an interval in sets that store both ends in one element.
const nftaSetElemKeyEnd = 10

// addElements attaches the elements of NEWSETELEM messages to their sets.
func addElements(sets map[setKey]*setInfo, msgs [][]byte) error {
	for _, m := range msgs {
		fam, attrs, err := msgFamily(m)
		if err != nil {
			return fmt.Errorf("set elements: %w", err)
		}
		at := parseAttrs(attrs)
		key := setKey{table: tableID{family: fam, name: at.str(unix.NFTA_SET_ELEM_LIST_TABLE)}, name: at.str(unix.NFTA_SET_ELEM_LIST_SET)}
		list := at.bytes(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		if at.err != nil {
			return fmt.Errorf("elements of set %s: %w", key.name, at.err)
		}
		s := sets[key]
		if s == nil {
			continue // a set of a table we do not read
		}
		l := attrIter{b: list}
		for l.next() {
			var e setElement
			ea := parseAttrs(l.data)
			e.key, _ = ea.value(unix.NFTA_SET_ELEM_KEY)
			e.keyEnd, _ = ea.value(nftaSetElemKeyEnd)
			e.flags, _ = ea.u32(unix.NFTA_SET_ELEM_FLAGS)
			if ea.err != nil {
				return fmt.Errorf("element of set %s: %w", key.name, ea.err)
			}
			s.elements = append(s.elements, e)
		}
		if l.err != nil {
			return fmt.Errorf("elements of set %s: %w", key.name, l.err)
		}
	}
	return nil
}

// named is the set as Result shows it: its keys sorted (hash sets dump in hash order), an
// interval set's end markers left out.
func (s *setInfo) named() NamedSet {
	out := NamedSet{Table: s.table.String(), Name: s.name}
	for _, e := range s.elements {
		if e.flags&unix.NFT_SET_ELEM_INTERVAL_END == 0 {
			out.Keys = append(out.Keys, e.key)
		}
	}
	sort.Slice(out.Keys, func(i, j int) bool { return bytes.Compare(out.Keys[i], out.Keys[j]) < 0 })
	return out
}

type setKey struct {
	table tableID
	name  string
}

// intervals returns the set's elements as closed [lo, hi] ranges of its key. Interval sets
// store a range as a start element and an end element flagged INTERVAL_END one past the last
// key (or, in newer kernels' pipapo sets, as one element with KEY_END), sorted here by key.
func (s *setInfo) intervals() ([][2][]byte, error) {
	var out [][2][]byte
	// Hash sets dump in hash order: sorted, the same set always reads the same.
	elems := append([]setElement(nil), s.elements...)
	sort.SliceStable(elems, func(i, j int) bool { return bytes.Compare(elems[i].key, elems[j].key) < 0 })
	if s.flags&unix.NFT_SET_INTERVAL == 0 {
		for _, e := range elems {
			hi := e.key
			if e.keyEnd != nil {
				hi = e.keyEnd
			}
			out = append(out, [2][]byte{e.key, hi})
		}
		return out, nil
	}
	for i := 0; i < len(elems); i++ {
		e := elems[i]
		switch {
		case e.flags&unix.NFT_SET_ELEM_INTERVAL_END != 0:
			continue // an end without a start: the kernel's sentinel for a range starting at 0
		case e.keyEnd != nil:
			out = append(out, [2][]byte{e.key, e.keyEnd})
		case i+1 < len(elems) && elems[i+1].flags&unix.NFT_SET_ELEM_INTERVAL_END != 0:
			end, ok := decrement(elems[i+1].key)
			if !ok {
				return nil, fmt.Errorf("set %s: interval end %x has no predecessor", s.name, elems[i+1].key)
			}
			out = append(out, [2][]byte{e.key, end})
			i++
		default:
			// An open interval runs to the largest key.
			out = append(out, [2][]byte{e.key, bytes.Repeat([]byte{0xff}, len(e.key))})
		}
	}
	return out, nil
}

// decrement returns the big-endian number b minus one.
func decrement(b []byte) ([]byte, bool) {
	out := append([]byte(nil), b...)
	for i := len(out) - 1; i >= 0; i-- {
		if out[i] > 0 {
			out[i]--
			return out, true
		}
		out[i] = 0xff
	}
	return nil, false
}

// decode builds the Result from a snapshot.
func decode(s *snapshot) (*Result, error) {
	res, _, err := decodeSnapshot(s)
	return res, err
}

// volatileSetFlags mark a set whose elements change without a committed transaction: a
// dynamic set is written by the packet path (dynset), a timeout set's elements expire.
const volatileSetFlags = unix.NFT_SET_EVAL | unix.NFT_SET_TIMEOUT

// decodeSnapshot is decode that also reports whether the Result may change while the ruleset
// generation stays the same (see ruleDecoder.opaque, volatileSetFlags): such a Result is only
// as good as the moment it was read, and is never cached.
func decodeSnapshot(s *snapshot) (res *Result, volatile bool, err error) {
	tables, err := parseTables(s.Tables)
	if err != nil {
		return nil, false, err
	}
	res = &Result{}
	b := newBuilder()
	for _, t := range tables {
		if t.kind == tableOther {
			res.OtherTables = append(res.OtherTables, t.id.String())
			continue
		}
		b.addTable(t)
	}
	if len(b.tables) == 0 {
		return res, false, nil
	}

	chains, err := parseChains(s.Chains)
	if err != nil {
		return nil, false, err
	}
	for _, c := range chains {
		if bt := b.tables[c.table]; bt != nil {
			bt.addChain(c)
		}
	}

	sets, err := parseSets(s.Sets)
	if err != nil {
		return nil, false, err
	}
	setsByKey := make(map[setKey]*setInfo, len(sets))
	for _, set := range sets {
		if b.tables[set.table] != nil {
			setsByKey[setKey{set.table, set.name}] = set
		}
	}
	if err := addElements(setsByKey, s.Elems); err != nil {
		return nil, false, err
	}
	for _, set := range sets {
		if b.tables[set.table] != nil {
			res.NamedSets = append(res.NamedSets, set.named())
			volatile = volatile || set.flags&volatileSetFlags != 0
		}
	}

	for _, bt := range b.order {
		id := bt.info.id
		bt.ctx = ruleContext{
			family:    id.family,
			chainName: bt.chainName,
			set:       func(name string) *setInfo { return setsByKey[setKey{id, name}] },
		}
	}
	for _, m := range s.Rules {
		if err := b.addRule(m); err != nil {
			return nil, false, err
		}
	}
	res.Sets = b.finish()
	return res, volatile || b.dec.opaque, nil
}

// builder collects the model tables of each kernel table while the dumps are decoded.
type builder struct {
	tables map[tableID]*builtTable
	order  []*builtTable
	sets   map[setID]*rules.RuleSet
	dec    ruleDecoder
}

type setID struct {
	backend rules.Backend
	family  rules.Family
}

// familyTable is a model table and the family of the set it belongs to.
type familyTable struct {
	family rules.Family
	table  *rules.Table
}

// builtTable is one kernel table and the model tables it feeds: one for ip/ip6, two for inet.
type builtTable struct {
	info    tableInfo
	targets []familyTable
	// chainNames maps kernel chain names to model names (identity for iptables-nft).
	chainNames map[string]string
	ctx        ruleContext
}

func newBuilder() *builder {
	return &builder{tables: map[tableID]*builtTable{}, sets: map[setID]*rules.RuleSet{}}
}

func (b *builder) set(backend rules.Backend, f rules.Family) *rules.RuleSet {
	id := setID{backend, f}
	if s := b.sets[id]; s != nil {
		return s
	}
	s := &rules.RuleSet{Backend: backend, Family: f}
	b.sets[id] = s
	return s
}

func (b *builder) addTable(t tableInfo) {
	bt := &builtTable{info: t, chainNames: map[string]string{}}
	backend := rules.BackendNft
	name := t.id.name
	if t.kind == tableNative {
		backend = rules.BackendNative
		name = nativeTableName(t.id.name)
	}
	for _, f := range tableFamilies(t.id.family) {
		set := b.set(backend, f)
		tname := name
		if set.Table(tname) != nil {
			// Two native tables for one iptables table (say istio-proxy-nat and a future
			// istio-ambient-nat): keep the second apart under its own name, never merge.
			tname = t.id.name
		}
		mt := set.AddTable(tname)
		mt.Origin = t.id.String()
		bt.targets = append(bt.targets, familyTable{f, mt})
	}
	b.tables[t.id] = bt
	b.order = append(b.order, bt)
}

func tableFamilies(f uint8) []rules.Family {
	switch f {
	case unix.NFPROTO_IPV4:
		return []rules.Family{rules.IPv4}
	case unix.NFPROTO_IPV6:
		return []rules.Family{rules.IPv6}
	}
	return []rules.Family{rules.IPv4, rules.IPv6}
}

// nativeTableName maps Istio's table names to the iptables table they stand for:
// istio-proxy-nat → nat.
func nativeTableName(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i >= 0 && isXtablesTable(name[i+1:]) {
		return name[i+1:]
	}
	return name
}

// nativeChainName maps a native user chain to its iptables spelling: istio-inbound → ISTIO_INBOUND.
func nativeChainName(name string) string {
	return strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

func (bt *builtTable) addChain(c chainInfo) {
	name := c.name
	if bt.info.kind == tableNative {
		name = nativeChainName(c.name)
		if c.base && int(c.hook) < len(hookChains) {
			name = hookChains[c.hook]
			for _, used := range bt.chainNames {
				if used == name {
					// A second base chain on the same hook keeps its own name.
					name = nativeChainName(c.name)
					break
				}
			}
		}
	}
	bt.chainNames[c.name] = name
	for _, t := range bt.targets {
		t.table.Chains = append(t.table.Chains, &rules.Chain{Name: name, Builtin: c.base, Policy: c.policy})
	}
}

// chainName maps a jump target; a chain the dump did not list (it cannot be, but a snapshot
// could lack it) is spelled as chains of its table are.
func (bt *builtTable) chainName(name string) string {
	if n, ok := bt.chainNames[name]; ok {
		return n
	}
	if bt.info.kind == tableNative {
		return nativeChainName(name)
	}
	return name
}

func (b *builder) addRule(msg []byte) error {
	fam, attrs, err := msgFamily(msg)
	if err != nil {
		return fmt.Errorf("rule: %w", err)
	}
	at := parseAttrs(attrs)
	table := bytes.TrimRight(at.bytes(unix.NFTA_RULE_TABLE), "\x00")
	chain := bytes.TrimRight(at.bytes(unix.NFTA_RULE_CHAIN), "\x00")
	exprs := at.bytes(unix.NFTA_RULE_EXPRESSIONS)
	if at.err != nil {
		return fmt.Errorf("rule in %s %s chain %s: %w", familyName(fam), table, chain, at.err)
	}
	bt := b.lookup(fam, table)
	if bt == nil {
		return nil
	}
	d, err := b.dec.decode(&bt.ctx, exprs)
	if err != nil {
		return fmt.Errorf("rule in %s chain %s: %w", bt.info.id, chain, err)
	}
	name := bt.chainName(string(chain))
	for _, t := range bt.targets {
		if d.only != 0 && d.only != t.family && len(bt.targets) > 1 {
			continue // an ip-only rule of an inet table is not part of the IPv6 set, and vice versa
		}
		c := t.table.Chain(name)
		if c == nil {
			c = &rules.Chain{Name: name}
			t.table.Chains = append(t.table.Chains, c)
		}
		r := d.only1(t.family)
		if len(bt.targets) > 1 {
			r = d.forFamily(t.family)
		}
		c.Rules = append(c.Rules, r)
	}
	return nil
}

// lookup finds a table by the name bytes of a message without allocating a string for it.
func (b *builder) lookup(family uint8, name []byte) *builtTable {
	for _, bt := range b.order {
		if bt.info.id.family == family && bt.info.id.name == string(name) {
			return bt
		}
	}
	return nil
}

// finish orders everything the way iptables-nft-save prints it and returns the sets.
func (b *builder) finish() []*rules.RuleSet {
	var out []*rules.RuleSet
	for _, id := range []setID{
		{rules.BackendNft, rules.IPv4}, {rules.BackendNft, rules.IPv6},
		{rules.BackendNative, rules.IPv4}, {rules.BackendNative, rules.IPv6},
	} {
		s := b.sets[id]
		if s == nil {
			continue
		}
		for _, t := range s.Tables {
			if id.backend == rules.BackendNft {
				for _, name := range xtablesBuiltins[t.Name] {
					if t.Chain(name) == nil {
						t.Chains = append(t.Chains, &rules.Chain{Name: name, Builtin: true, Policy: "ACCEPT"})
					}
				}
			}
			sortChains(t.Chains)
		}
		sort.SliceStable(s.Tables, func(i, j int) bool { return tableRank(s.Tables[i].Name) < tableRank(s.Tables[j].Name) })
		out = append(out, s)
	}
	return out
}

func tableRank(name string) int {
	for i, t := range xtablesTables {
		if t == name {
			return i
		}
	}
	return len(xtablesTables)
}

// sortChains puts base chains first in hook order, then user chains by name, as
// iptables-nft-save does; the kernel lists chains in creation order.
func sortChains(cs []*rules.Chain) {
	rank := func(c *rules.Chain) int {
		if !c.Builtin {
			return len(hookChains) + 1
		}
		for i, h := range hookChains {
			if c.Name == h {
				return i
			}
		}
		return len(hookChains)
	}
	sort.SliceStable(cs, func(i, j int) bool {
		ri, rj := rank(cs[i]), rank(cs[j])
		if ri != rj {
			return ri < rj
		}
		if ri <= len(hookChains)-1 {
			return false
		}
		return cs[i].Name < cs[j].Name
	})
}

// attrIter walks netlink attributes without allocating. Attribute headers are in host byte
// order; nf_tables payloads are big-endian.
type attrIter struct {
	b    []byte
	typ  uint16
	data []byte
	err  error
}

func (a *attrIter) next() bool {
	if a.err != nil || len(a.b) == 0 {
		return false
	}
	if len(a.b) < 4 {
		a.err = fmt.Errorf("truncated netlink attribute header (%d bytes)", len(a.b))
		return false
	}
	l := int(binary.NativeEndian.Uint16(a.b[0:2]))
	if l < 4 || l > len(a.b) {
		a.err = fmt.Errorf("netlink attribute length %d outside 4..%d", l, len(a.b))
		return false
	}
	a.typ = binary.NativeEndian.Uint16(a.b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	a.data = a.b[4:l]
	adv := (l + 3) &^ 3
	if adv > len(a.b) {
		adv = len(a.b)
	}
	a.b = a.b[adv:]
	return true
}

func (a *attrIter) str() string {
	return string(bytes.TrimRight(a.data, "\x00"))
}

func (a *attrIter) u32() (uint32, error) {
	if len(a.data) != 4 {
		return 0, fmt.Errorf("attribute %d: %d bytes where a 32-bit value belongs", a.typ, len(a.data))
	}
	return binary.BigEndian.Uint32(a.data), nil
}

// maxAttr is the highest attribute type any decoder reads (NFTA_SET_ELEM_KEY_END is 10,
// NFTA_PAYLOAD_* go up to 9); the others are of no decoder's interest.
const maxAttr = 15

// attrTable is the attributes of one message, expression or nest by type, so that each decoder
// names the fields it reads instead of running a loop of its own. Of an attribute sent twice the last counts, as
// the kernel's nla_parse keeps it. The first malformed attribute or value is kept in err and
// every later read returns nothing: a decoder checks err once, after its reads.
type attrTable struct {
	b []byte
	// span is where each attribute's payload lies in b: offsets rather than slices, so the table
	// a decoder zeroes for every expression is a third of the size.
	span    [maxAttr + 1]struct{ from, to uint32 }
	present uint16
	err     error
}

func parseAttrs(b []byte) attrTable {
	t := attrTable{b: b}
	a := attrIter{b: b}
	for {
		at := len(b) - len(a.b) + 4 // where the next attribute's payload starts
		if !a.next() {
			break
		}
		if a.typ <= maxAttr {
			t.span[a.typ].from, t.span[a.typ].to = uint32(at), uint32(at+len(a.data))
			t.present |= 1 << a.typ
		}
	}
	t.err = a.err
	return t
}

// has reports whether the expression has attribute typ.
func (t *attrTable) has(typ uint16) bool {
	return typ <= maxAttr && t.present&(1<<typ) != 0
}

// bytes returns attribute typ's payload; nil when it is absent.
func (t *attrTable) bytes(typ uint16) []byte {
	if !t.has(typ) {
		return nil
	}
	sp := t.span[typ]
	return t.b[sp.from:sp.to:sp.to]
}

// str returns attribute typ as a NUL-terminated string.
func (t *attrTable) str(typ uint16) string {
	return string(bytes.TrimRight(t.bytes(typ), "\x00"))
}

// u32 returns attribute typ as a 32-bit value in network order, and whether it is there.
func (t *attrTable) u32(typ uint16) (uint32, bool) {
	if t.err != nil || !t.has(typ) {
		return 0, false
	}
	a := attrIter{typ: typ, data: t.bytes(typ)}
	v, err := a.u32()
	if err != nil {
		t.err = err
		return 0, false
	}
	return v, true
}

// value returns attribute typ as an NFTA_DATA nest holding a value, and whether it is there.
func (t *attrTable) value(typ uint16) ([]byte, bool) {
	if t.err != nil || !t.has(typ) {
		return nil, false
	}
	v, err := dataValue(t.bytes(typ))
	if err != nil {
		t.err = err
		return nil, false
	}
	return v, true
}

// dataValue reads an NFTA_DATA nest holding a value.
func dataValue(b []byte) ([]byte, error) {
	a := attrIter{b: b}
	for a.next() {
		if a.typ == unix.NFTA_DATA_VALUE {
			return a.data, nil
		}
	}
	if a.err != nil {
		return nil, a.err
	}
	return nil, errors.New("data without a value")
}
