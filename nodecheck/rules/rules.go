// Package rules is meshdoctor's model of the packet-capture rules in a network namespace.
//
// A Rule says what an iptables or nftables rule means, independent of the backend it was read
// from. Rules read over netlink (iptables-nft, Istio's native nftables tables), read from the
// legacy xtables socket, parsed from iptables-save text, or built from a pod's annotations all
// end up as the same Rule values, so they can be compared by meaning: `-p tcp -m tcp --dport
// 15008` and `meta l4proto tcp tcp dport 15008` are one rule here.
package rules

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Family is the IP family a rule set applies to.
type Family uint8

// The two IP families; the values are what iptables prints (4, 6).
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// Backend is where a rule set lives in the kernel.
type Backend string

// The places Istio may have written its rules.
const (
	// BackendNft is iptables-nft: nftables tables named like the xtables ones (ip nat, ip6 mangle…).
	BackendNft Backend = "nft"
	// BackendLegacy is iptables-legacy: the xtables tables of the ip_tables/ip6_tables modules.
	BackendLegacy Backend = "legacy"
	// BackendNative is Istio's own nftables tables (`inet istio-proxy-nat` and friends).
	BackendNative Backend = "native-nftables"
)

// MatchKind says what a Match tests. The order of the constants is the order in which a rule's
// matches are rendered, so that two rules with the same meaning render to the same text.
type MatchKind uint8

// Match kinds meshdoctor understands. MatchOther keeps anything else, verbatim, so a rule is never
// shortened silently.
const (
	MatchSource MatchKind = iota
	MatchDestination
	MatchInInterface
	MatchOutInterface
	MatchProtocol
	MatchSourcePort
	MatchDestinationPort
	MatchSourcePorts      // multiport --sports
	MatchDestinationPorts // multiport --dports
	MatchUIDOwner
	MatchGIDOwner
	MatchMark
	MatchConnMark
	MatchCTState
	MatchSocket
	MatchOther
)

var matchFlags = [...]string{
	MatchSource:           "-s",
	MatchDestination:      "-d",
	MatchInInterface:      "-i",
	MatchOutInterface:     "-o",
	MatchProtocol:         "-p",
	MatchSourcePort:       "--sport",
	MatchDestinationPort:  "--dport",
	MatchSourcePorts:      "-m multiport --sports",
	MatchDestinationPorts: "-m multiport --dports",
	MatchUIDOwner:         "-m owner --uid-owner",
	MatchGIDOwner:         "-m owner --gid-owner",
	MatchMark:             "-m mark --mark",
	MatchConnMark:         "-m connmark --mark",
	MatchCTState:          "-m conntrack --ctstate",
	MatchSocket:           "-m socket",
	MatchOther:            "",
}

// Match is one condition of a rule, with its value already normalized (addresses as prefixes,
// marks as 0xVALUE/0xMASK, port ranges as A:B), so equal meanings have equal values.
type Match struct {
	Kind  MatchKind
	Not   bool
	Value string
}

// Target is what a rule does when it matches: a verdict (ACCEPT, DROP, RETURN), a jump to a chain,
// or an extension (REDIRECT, TPROXY, MARK, CONNMARK, CT) with its normalized options.
type Target struct {
	Name string
	// Args are the target's options in canonical form, e.g. "--to-ports 15001".
	Args string
	// Goto is true for `-g CHAIN` (no return to the calling chain).
	Goto bool
}

// IsJump reports whether the target is a user chain rather than a verdict or an extension.
func (t Target) IsJump() bool {
	switch t.Name {
	case "", "ACCEPT", "DROP", "RETURN", "REJECT", "QUEUE", "REDIRECT", "TPROXY", "MARK",
		"CONNMARK", "CT", "DNAT", "SNAT", "MASQUERADE", "LOG", "NOTRACK":
		return false
	}
	return !strings.HasPrefix(t.Name, "?")
}

// Rule is one rule of a chain.
type Rule struct {
	Matches []Match
	Target  Target
}

// Normalize sorts the matches into their canonical order and drops duplicates, so that rules with
// the same meaning render to the same text.
func (r *Rule) Normalize() {
	// slices rather than sort: sort.SliceStable allocates a swapper on every call, and every
	// decoded rule comes through here.
	slices.SortStableFunc(r.Matches, func(a, b Match) int { return cmp.Compare(a.Kind, b.Kind) })
	out := r.Matches[:0]
	for i, m := range r.Matches {
		// Unknown words are kept as they came, repeated or not.
		if i > 0 && m == r.Matches[i-1] && m.Kind != MatchOther {
			continue
		}
		out = append(out, m)
	}
	r.Matches = out
}

// Spec renders the rule without its chain, in iptables-save syntax with a canonical option order:
// `-o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT`.
func (r Rule) Spec() string {
	var b strings.Builder
	for _, m := range r.Matches {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		flag := matchFlags[m.Kind]
		// iptables puts the negation after the module: "-m owner ! --uid-owner 1337".
		if module, opt, ok := strings.Cut(flag, " --"); ok && strings.HasPrefix(flag, "-m ") {
			b.WriteString(module)
			b.WriteByte(' ')
			flag = "--" + opt
		}
		if m.Not {
			b.WriteString("! ")
		}
		b.WriteString(flag)
		if flag != "" && m.Value != "" {
			b.WriteByte(' ')
		}
		b.WriteString(m.Value)
	}
	if r.Target.Name != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if r.Target.Goto {
			b.WriteString("-g ")
		} else {
			b.WriteString("-j ")
		}
		b.WriteString(r.Target.Name)
		if r.Target.Args != "" {
			b.WriteByte(' ')
			b.WriteString(r.Target.Args)
		}
	}
	return b.String()
}

// Has reports whether the rule has a match of kind k (negated or not).
func (r Rule) Has(k MatchKind) bool {
	for _, m := range r.Matches {
		if m.Kind == k {
			return true
		}
	}
	return false
}

// Chain is a chain with its rules in order.
type Chain struct {
	Name string
	// Builtin is true for the chains a table hooks into the kernel (PREROUTING, OUTPUT…), and for
	// native nftables base chains.
	Builtin bool
	Policy  string
	Rules   []Rule
}

// Table is one table (nat, mangle, raw, filter) of one backend and family.
type Table struct {
	Name string
	// Origin says where the table was read in the backend's own words, for evidence:
	// "ip nat" (iptables-nft), "ip_tables nat" (legacy), "inet istio-proxy-nat" (native).
	Origin string
	Chains []*Chain
}

// Chain returns the named chain, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// AddChain returns the named chain, creating it when it does not exist yet.
func (t *Table) AddChain(name string) *Chain {
	if c := t.Chain(name); c != nil {
		return c
	}
	c := &Chain{Name: name, Builtin: IsBuiltinChain(name)}
	t.Chains = append(t.Chains, c)
	return c
}

// RuleCount is the number of rules in all chains of the table.
func (t *Table) RuleCount() int {
	n := 0
	for _, c := range t.Chains {
		n += len(c.Rules)
	}
	return n
}

// RuleSet is everything one backend holds for one family.
type RuleSet struct {
	Backend Backend
	Family  Family
	Tables  []*Table
}

// Table returns the named table, or nil.
func (s *RuleSet) Table(name string) *Table {
	for _, t := range s.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// AddTable returns the named table, creating it when it does not exist yet.
func (s *RuleSet) AddTable(name string) *Table {
	if t := s.Table(name); t != nil {
		return t
	}
	t := &Table{Name: name}
	s.Tables = append(s.Tables, t)
	return t
}

// RuleCount is the number of rules in all tables.
func (s *RuleSet) RuleCount() int {
	n := 0
	for _, t := range s.Tables {
		n += t.RuleCount()
	}
	return n
}

// Save renders the rule set in iptables-save's format (without counters), tables and chains in the
// order they were read. It is what meshdoctor shows as "the raw rules read from the netns".
func (s *RuleSet) Save() string {
	var b strings.Builder
	for _, t := range s.Tables {
		fmt.Fprintf(&b, "*%s\n", t.Name)
		for _, c := range t.Chains {
			policy := c.Policy
			if policy == "" {
				policy = "-"
			}
			fmt.Fprintf(&b, ":%s %s\n", c.Name, policy)
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				fmt.Fprintf(&b, "-A %s %s\n", c.Name, r.Spec())
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// IsBuiltinChain reports whether name is one of the chains xtables tables hook into the kernel.
func IsBuiltinChain(name string) bool {
	switch name {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}
