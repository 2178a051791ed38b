package xtlegacy

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// ErrCorrupt is wrapped by every error about a blob that is not a well-formed table: the kernel
// never returns one, so it means a bug here or a capture that was damaged.
var ErrCorrupt = errors.New("malformed xtables blob")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// Info is a table's header as IPT_SO_GET_INFO / IP6T_SO_GET_INFO return it (struct ipt_getinfo):
// where each builtin chain starts and where its policy entry sits, as byte offsets into the
// entries blob.
type Info struct {
	Name string
	// ValidHooks has bit h set for each hook h (NF_INET_PRE_ROUTING = 0 …) the table is on.
	ValidHooks uint32
	// HookEntry[h] is the offset of the first entry of builtin chain h.
	HookEntry [hookCount]uint32
	// Underflow[h] is the offset of builtin chain h's policy entry.
	Underflow  [hookCount]uint32
	NumEntries uint32
	// Size is the length of the entries blob in bytes.
	Size uint32
}

// DecodeInfo reads the reply of IPT_SO_GET_INFO (84 bytes, native byte order).
func DecodeInfo(b []byte) (Info, error) {
	if len(b) != infoSize {
		return Info{}, corrupt("table info is %d bytes, want %d", len(b), infoSize)
	}
	info := Info{Name: cString(b[:tableNameLen])}
	off := tableNameLen
	info.ValidHooks = ne.Uint32(b[off:])
	off += 4
	for h := range hookCount {
		info.HookEntry[h] = ne.Uint32(b[off+4*h:])
		info.Underflow[h] = ne.Uint32(b[off+4*hookCount+4*h:])
	}
	off += 8 * hookCount
	info.NumEntries = ne.Uint32(b[off:])
	info.Size = ne.Uint32(b[off+4:])
	return info, nil
}

// encodeInfo is DecodeInfo's inverse: the request buffer of IPT_SO_GET_INFO carries the name.
func encodeInfo(info Info) []byte {
	b := make([]byte, infoSize)
	copy(b[:tableNameLen-1], info.Name)
	off := tableNameLen
	ne.PutUint32(b[off:], info.ValidHooks)
	off += 4
	for h := range hookCount {
		ne.PutUint32(b[off+4*h:], info.HookEntry[h])
		ne.PutUint32(b[off+4*hookCount+4*h:], info.Underflow[h])
	}
	off += 8 * hookCount
	ne.PutUint32(b[off:], info.NumEntries)
	ne.PutUint32(b[off+4:], info.Size)
	return b
}

// entry is one struct ipt_entry of the blob, bounds-checked.
type entry struct {
	off    int    // offset in the blob
	b      []byte // the whole entry, next_offset bytes
	target int    // target_offset within b
	tname  string // target name
	tdata  []byte // target data after the header
	trev   uint8
}

// DecodeEntries turns a table's entries blob (the part of IPT_SO_GET_ENTRIES' reply after struct
// ipt_get_entries) into meshdoctor's rule model, the way iptables-legacy-save reads it (libiptc's
// parse_table): builtin chains start at info.HookEntry and end with their policy entry at
// info.Underflow; a user chain starts with an ERROR entry carrying its name and ends with an
// unconditional RETURN; a final ERROR entry ends the table. Chains come out as iptables-save
// lists them: builtin chains in hook order, then user chains sorted by name.
//
// Anything that does not fit (a corrupt or truncated blob) is an error wrapping ErrCorrupt; no
// input makes it panic. Matches and targets it does not know are kept as MatchOther and as
// targets with a raw description, never dropped.
func DecodeEntries(family rules.Family, table string, info Info, blob []byte) (*rules.Table, error) {
	l, ok := layoutFor(family)
	if !ok {
		return nil, fmt.Errorf("unknown IP family %v", family)
	}
	if uint64(info.Size) != uint64(len(blob)) {
		return nil, corrupt("table info says %d bytes of entries, got %d", info.Size, len(blob))
	}
	entries, err := splitEntries(l, blob, int(min(info.NumEntries, uint32(len(blob)/(l.size+extHeaderSize)))))
	if err != nil {
		return nil, err
	}
	if uint64(len(entries)) != uint64(info.NumEntries) {
		return nil, corrupt("table info says %d entries, found %d", info.NumEntries, len(entries))
	}
	chains, err := splitChains(l, info, entries)
	if err != nil {
		return nil, err
	}

	// A jump's verdict is the offset of the entry right after the target chain's ERROR head.
	starts := make(map[int]string, len(chains))
	for _, c := range chains {
		if !c.builtin {
			if _, dup := starts[c.firstOff]; dup {
				return nil, corrupt("two chains start at offset %d", c.firstOff)
			}
			starts[c.firstOff] = c.name
		}
	}

	t := &rules.Table{Name: table, Origin: l.moduleName + " " + table}
	seen := make(map[string]bool, len(chains))
	for _, c := range chains {
		if seen[c.name] {
			return nil, corrupt("chain %s appears twice", c.name)
		}
		seen[c.name] = true
		out := &rules.Chain{Name: c.name, Builtin: c.builtin, Policy: c.policy}
		if len(c.rules) > 0 {
			out.Rules = make([]rules.Rule, 0, len(c.rules))
		}
		for _, e := range c.rules {
			r, err := decodeRule(l, family, e, starts)
			if err != nil {
				return nil, fmt.Errorf("chain %s, entry at offset %d: %w", c.name, e.off, err)
			}
			out.Rules = append(out.Rules, r)
		}
		t.Chains = append(t.Chains, out)
	}
	// libiptc keeps user chains sorted by strcmp; iptables-save prints them in that order.
	sort.SliceStable(t.Chains, func(i, j int) bool {
		a, b := t.Chains[i], t.Chains[j]
		if a.Builtin != b.Builtin {
			return a.Builtin
		}
		return !a.Builtin && a.Name < b.Name
	})
	return t, nil
}

// splitEntries walks the blob entry by entry, checking every offset before it is used. hint is
// the expected number of entries.
func splitEntries(l *entryLayout, blob []byte, hint int) ([]entry, error) {
	entries := make([]entry, 0, hint)
	for off := 0; off < len(blob); {
		if off%xtAlign != 0 {
			return nil, corrupt("entry at offset %d is not aligned", off)
		}
		if len(blob)-off < l.size+extHeaderSize {
			return nil, corrupt("entry at offset %d: %d bytes left, an entry needs at least %d", off, len(blob)-off, l.size+extHeaderSize)
		}
		tOff := int(ne.Uint16(blob[off+l.targetOffset:]))
		next := int(ne.Uint16(blob[off+l.nextOffset:]))
		if tOff < l.size || tOff+extHeaderSize > next || next > len(blob)-off {
			return nil, corrupt("entry at offset %d: target offset %d and next offset %d do not fit", off, tOff, next)
		}
		b := blob[off : off+next]
		tsize := int(ne.Uint16(b[tOff:]))
		if tsize < extHeaderSize || tOff+tsize > next {
			return nil, corrupt("entry at offset %d: target size %d does not fit", off, tsize)
		}
		entries = append(entries, entry{
			off:    off,
			b:      b,
			target: tOff,
			tname:  cString(b[tOff+2 : tOff+2+extNameLen]),
			trev:   b[tOff+2+extNameLen],
			tdata:  b[tOff+extHeaderSize : tOff+tsize],
		})
		off += next
	}
	if len(entries) == 0 {
		return nil, corrupt("no entries")
	}
	return entries, nil
}

// rawChain is a chain's entries before decoding.
type rawChain struct {
	name     string
	builtin  bool
	policy   string
	firstOff int // offset of the first entry after the head: what jumps point at
	rules    []entry
}

// splitChains groups entries into chains as libiptc does, and checks the result against the
// hook offsets the kernel reported.
func splitChains(l *entryLayout, info Info, entries []entry) ([]rawChain, error) {
	last := entries[len(entries)-1]
	if last.tname != errorTargetName {
		return nil, corrupt("table does not end with an ERROR entry")
	}
	hookAt := make(map[int]int, hookCount)
	for h := range hookCount {
		if info.ValidHooks&(1<<h) == 0 {
			continue
		}
		off := int(info.HookEntry[h])
		if _, dup := hookAt[off]; dup {
			return nil, corrupt("two hooks start at offset %d", off)
		}
		hookAt[off] = h
	}
	if info.ValidHooks>>hookCount != 0 {
		return nil, corrupt("unknown hooks in valid_hooks 0x%x", info.ValidHooks)
	}

	var chains []rawChain
	var cur *rawChain
	var curHook int
	// finish closes the current chain: its last entry is the policy (builtin) or the RETURN
	// footer (user chain) that libiptc writes and iptables-save does not show.
	finish := func() error {
		if cur == nil {
			return nil
		}
		if len(cur.rules) == 0 {
			return corrupt("chain %s has no policy or footer entry", cur.name)
		}
		foot := cur.rules[len(cur.rules)-1]
		if cur.builtin {
			if foot.off != int(info.Underflow[curHook]) {
				return corrupt("chain %s ends at offset %d, its underflow is at %d", cur.name, foot.off, info.Underflow[curHook])
			}
			v, ok := standardVerdict(foot)
			if !ok || (v != verdictAccept && v != verdictDrop) {
				return corrupt("chain %s: policy entry at offset %d is not ACCEPT or DROP", cur.name, foot.off)
			}
			cur.policy = verdictName(v)
			cur.rules = cur.rules[:len(cur.rules)-1]
		} else if v, ok := standardVerdict(foot); ok && v == verdictReturn && isUnconditional(l, foot) {
			cur.rules = cur.rules[:len(cur.rules)-1]
		}
		// A user chain whose footer is anything else was not written by libiptc; keeping the
		// entry as a rule says what the kernel will really do.
		chains = append(chains, *cur)
		cur = nil
		return nil
	}

	for i, e := range entries[:len(entries)-1] {
		if h, ok := hookAt[e.off]; ok {
			if err := finish(); err != nil {
				return nil, err
			}
			cur = &rawChain{name: hookNames[h], builtin: true, firstOff: e.off, rules: entries[i:i]}
			curHook = h
			delete(hookAt, e.off)
			// The hook's first entry is a rule (or its policy), not a head: fall through.
		} else if e.tname == errorTargetName {
			if err := finish(); err != nil {
				return nil, err
			}
			name := cString(e.tdata[:min(len(e.tdata), errorNameLen)])
			if name == "" {
				return nil, corrupt("user chain head at offset %d has no name", e.off)
			}
			cur = &rawChain{name: name, firstOff: e.off + len(e.b), rules: entries[i+1 : i+1]}
			continue
		}
		if cur == nil {
			return nil, corrupt("entry at offset %d belongs to no chain", e.off)
		}
		if cur.builtin && e.off > int(info.Underflow[curHook]) {
			return nil, corrupt("entry at offset %d follows chain %s's policy", e.off, cur.name)
		}
		// A chain's entries are contiguous: its rules are a window on entries, grown in place.
		cur.rules = cur.rules[:len(cur.rules)+1]
	}
	if err := finish(); err != nil {
		return nil, err
	}
	if len(hookAt) > 0 {
		for h := range hookCount {
			if info.ValidHooks&(1<<h) != 0 {
				if _, missed := hookAt[int(info.HookEntry[h])]; missed {
					return nil, corrupt("hook %s starts at offset %d, which is no entry of the table", hookNames[h], info.HookEntry[h])
				}
			}
		}
	}
	return chains, nil
}

// standardVerdict returns the verdict of a standard target, and false for any other target.
func standardVerdict(e entry) (int32, bool) {
	if e.tname != standardTargetName || len(e.tdata) < 4 {
		return 0, false
	}
	return int32(ne.Uint32(e.tdata)), true
}

// isUnconditional reports whether the entry matches every packet: no matches and an all-zero
// ipt_ip, as libiptc checks for chain footers.
func isUnconditional(l *entryLayout, e entry) bool {
	if e.target != l.size {
		return false
	}
	for _, c := range e.b[:l.invFlags+1] {
		if c != 0 {
			return false
		}
	}
	return true
}

func verdictName(v int32) string {
	switch v {
	case verdictAccept:
		return "ACCEPT"
	case verdictDrop:
		return "DROP"
	case verdictReturn:
		return "RETURN"
	case verdictQueue:
		return "QUEUE"
	}
	return "?verdict" + strconv.Itoa(int(v))
}

// decodeRule decodes one rule entry: its ipt_ip part, its matches, its target.
func decodeRule(l *entryLayout, family rules.Family, e entry, chainStarts map[int]string) (rules.Rule, error) {
	var r rules.Rule
	decodeIP(l, family, e.b, &r)
	for off := l.size; off < e.target; {
		if e.target-off < extHeaderSize {
			return rules.Rule{}, corrupt("match at %d: %d bytes left before the target", off, e.target-off)
		}
		size := int(ne.Uint16(e.b[off:]))
		if size < extHeaderSize || off+size > e.target {
			return rules.Rule{}, corrupt("match at %d: size %d does not fit", off, size)
		}
		name := cString(e.b[off+2 : off+2+extNameLen])
		rev := e.b[off+2+extNameLen]
		decodeMatch(family, name, rev, e.b[off+extHeaderSize:off+size], &r)
		off += size
	}
	t, err := decodeTarget(l, family, e, chainStarts)
	if err != nil {
		return rules.Rule{}, err
	}
	r.Target = t
	r.Normalize()
	return r, nil
}

// decodeIP reads the part of an entry every rule has: addresses, interfaces, protocol.
func decodeIP(l *entryLayout, family rules.Family, b []byte, r *rules.Rule) {
	inv := b[l.invFlags]
	flags := b[l.flags]
	addr := func(kind rules.MatchKind, opt string, at, maskAt int, invBit uint8) {
		a, m := b[at:at+l.addrLen], b[maskAt:maskAt+l.addrLen]
		not := inv&invBit != 0
		if allZero(a) && allZero(m) && !not {
			return
		}
		ip := addrFrom(a)
		if bits, ok := rules.MaskBits(m); ok {
			r.Matches = append(r.Matches, rules.Match{Kind: kind, Not: not, Value: rules.PrefixValue(netip.PrefixFrom(ip, bits))})
			return
		}
		// Istio never writes a non-contiguous mask, and a prefix cannot hold one: keep it as is.
		r.Matches = append(r.Matches, rules.Match{Kind: rules.MatchOther, Value: bang(not) + opt + " " + ip.String() + "/" + addrFrom(m).String()})
	}
	addr(rules.MatchSource, "-s", l.src, l.srcMask, invSrcIP)
	addr(rules.MatchDestination, "-d", l.dst, l.dstMask, invDstIP)

	iface := func(kind rules.MatchKind, at, maskAt int, invBit uint8) {
		name, mask := b[at:at+ifNameSize], b[maskAt:maskAt+ifNameSize]
		not := inv&invBit != 0
		if mask[0] == 0 {
			// An empty mask matches every interface ("-i +"), and iptables-save omits it;
			// inverted, it matches none, which must not vanish.
			if not {
				r.Matches = append(r.Matches, rules.Match{Kind: kind, Not: true, Value: "+"})
			}
			return
		}
		r.Matches = append(r.Matches, rules.Match{Kind: kind, Not: not, Value: ifaceName(name, mask)})
	}
	iface(rules.MatchInInterface, l.inIface, l.inIfaceMask, invViaIn)
	iface(rules.MatchOutInterface, l.outIface, l.outIfaceMask, invViaOut)

	proto := ne.Uint16(b[l.proto:])
	// ip6_tables only compares the protocol when IP6T_F_PROTO is set; ip_tables whenever it is
	// not 0.
	if proto != 0 && (family == rules.IPv4 || flags&l.flagProto != 0) {
		r.Matches = append(r.Matches, rules.Match{Kind: rules.MatchProtocol, Not: inv&invProto != 0, Value: protocolName(proto)})
	}
	if l.flagFrag != 0 && flags&l.flagFrag != 0 {
		r.Matches = append(r.Matches, rules.Match{Kind: rules.MatchOther, Value: bang(inv&invFrag != 0) + "-f"})
	}
	if l.flagTOS != 0 && flags&l.flagTOS != 0 {
		r.Matches = append(r.Matches, rules.Match{Kind: rules.MatchOther, Value: "ip6 tos 0x" + strconv.FormatUint(uint64(b[l.tos]), 16)})
	}
}

// ifaceName renders an interface and its mask as iptables-save does: the bytes the mask covers,
// and "+" when the mask stops before the name does (a prefix match such as "veth+").
func ifaceName(name, mask []byte) string {
	var s []byte
	for i := range ifNameSize {
		if mask[i] == 0 {
			if i > 0 && name[i-1] != 0 {
				s = append(s, '+')
			}
			break
		}
		if name[i] != 0 {
			s = append(s, name[i])
		}
	}
	return string(s)
}

// protocolName renders an ipt_ip protocol number with the rules package's naming, shared by every
// reader. The field is 16 bits wide but IP protocols are 8; anything larger stays a number.
func protocolName(p uint16) string {
	if p > 0xff {
		return strconv.Itoa(int(p))
	}
	return rules.ProtocolValue(uint8(p))
}

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// bang is the "! " that precedes an inverted option inside a MatchOther value, where ParseSave
// keeps it too.
func bang(not bool) string {
	if not {
		return "! "
	}
	return ""
}

// rawData describes extension data meshdoctor does not decode: enough to tell two different
// ones apart, bounded so a big blob does not flood a report.
func rawData(b []byte) string {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	if len(b) == 0 {
		return ""
	}
	const max = 64
	var sb strings.Builder
	sb.WriteString(" data=")
	for i, c := range b {
		if i == max {
			sb.WriteString("…")
			break
		}
		fmt.Fprintf(&sb, "%02x", c)
	}
	return sb.String()
}
