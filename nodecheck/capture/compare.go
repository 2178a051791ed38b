package capture

import (
	"fmt"
	"sort"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// ChainDiff is how one chain of the rules read differs from what the configuration calls for.
// Rules are shown in iptables-save syntax, canonical order.
type ChainDiff struct {
	Table string `json:"table"`
	Chain string `json:"chain"`
	// Absent is true when the chain does not exist at all in the backend; Emptied when it exists
	// without any rule while rules are expected (flushed).
	Absent  bool `json:"absent,omitempty"`
	Emptied bool `json:"emptied,omitempty"`
	// Missing rules have no counterpart; Changed rules exist with other values (another port,
	// another address); Extra rules are not called for.
	Missing    []string     `json:"missing,omitempty"`
	Changed    []RuleChange `json:"changed,omitempty"`
	Extra      []string     `json:"extra,omitempty"`
	OutOfOrder bool         `json:"outOfOrder,omitempty"`
}

// RuleChange pairs an expected rule with the rule of the same shape found instead.
type RuleChange struct {
	Expected string `json:"expected"`
	Found    string `json:"found"`
}

func (d ChainDiff) empty() bool {
	return !d.Absent && len(d.Missing) == 0 && len(d.Changed) == 0 && len(d.Extra) == 0 && !d.OutOfOrder
}

// FamilyDiff is the comparison of one family: which backends hold Istio's rules and how the one
// that captures differs from the expected rules.
type FamilyDiff struct {
	Family rules.Family `json:"-"`
	// Backends that hold Istio rules in this family, most rules first.
	Backends []rules.Backend `json:"backends"`
	// Compared is the backend the diff is against (the one with most Istio rules).
	Compared rules.Backend `json:"compared,omitempty"`
	Chains   []ChainDiff   `json:"chains,omitempty"`
	// ExpectedNone is true when nothing is expected in this family.
	ExpectedNone bool `json:"expectedNone,omitempty"`
}

// istioRuleCount counts the rules of a rule set that belong to Istio's capture: every rule of an
// ISTIO_* chain, and builtin-chain rules that jump into one.
func istioRuleCount(s *rules.RuleSet) int {
	n := 0
	for _, t := range s.Tables {
		for _, c := range t.Chains {
			if istioChain(c.Name) {
				n += len(c.Rules)
				continue
			}
			for _, r := range c.Rules {
				if istioChain(r.Target.Name) {
					n++
				}
			}
		}
	}
	return n
}

// Compare diffs the rule sets read in one family (any backends) against what exp calls for.
func Compare(exp *Expected, sets []*rules.RuleSet) FamilyDiff {
	fd := FamilyDiff{Family: exp.Family, ExpectedNone: exp.Empty()}
	type counted struct {
		set *rules.RuleSet
		n   int
	}
	var withRules []counted
	for _, s := range sets {
		if s.Family != exp.Family {
			continue
		}
		if n := istioRuleCount(s); n > 0 {
			withRules = append(withRules, counted{s, n})
		}
	}
	sort.SliceStable(withRules, func(i, j int) bool { return withRules[i].n > withRules[j].n })
	for _, c := range withRules {
		fd.Backends = append(fd.Backends, c.set.Backend)
	}
	var actual *rules.RuleSet
	if len(withRules) > 0 {
		actual = withRules[0].set
		fd.Compared = actual.Backend
	}

	seen := map[tableChain]bool{}
	for _, tc := range exp.order {
		seen[tc] = true
		d := diffChain(tc.table, tc.chain, exp.Tables[tc.table][tc.chain], actual)
		if !d.empty() {
			fd.Chains = append(fd.Chains, d)
		}
	}
	// Istio chains that exist but are not called for at all (e.g. TPROXY chains in a REDIRECT pod).
	if actual != nil {
		for _, t := range actual.Tables {
			for _, c := range t.Chains {
				tc := tableChain{t.Name, c.Name}
				if !istioChain(c.Name) || seen[tc] || exp.tolerated[tc] || len(c.Rules) == 0 {
					continue
				}
				d := ChainDiff{Table: t.Name, Chain: c.Name}
				for _, r := range c.Rules {
					d.Extra = append(d.Extra, r.Spec())
				}
				fd.Chains = append(fd.Chains, d)
			}
		}
	}
	return fd
}

// diffChain compares one chain. In builtin chains only rules that jump into Istio chains, or that
// the configuration calls for, are Istio's; anything else there belongs to someone else.
func diffChain(table, chain string, want []ExpectedRule, actual *rules.RuleSet) ChainDiff {
	d := ChainDiff{Table: table, Chain: chain}
	var have []rules.Rule
	found := false
	if actual != nil {
		if t := actual.Table(table); t != nil {
			if c := t.Chain(chain); c != nil {
				found = true
				have = c.Rules
			}
		}
	}
	required := 0
	for _, w := range want {
		if !w.Optional {
			required++
		}
	}
	if !found {
		if required > 0 {
			d.Absent = true
			for _, w := range want {
				if !w.Optional {
					d.Missing = append(d.Missing, w.text())
				}
			}
		}
		return d
	}

	d.Emptied = len(have) == 0 && required > 0 && istioChain(chain)
	wantSpecs := make([]string, len(want))
	optional := map[string]bool{}
	for i, w := range want {
		wantSpecs[i] = w.text()
		if w.Optional {
			optional[wantSpecs[i]] = true
		}
	}
	builtin := !istioChain(chain)
	wanted := map[string]int{}
	for _, s := range wantSpecs {
		wanted[s]++
	}
	// Match found rules to expected ones by their canonical text, as multisets.
	var matchedOrder []int // index in want of each matched found rule, in found order
	used := make([]bool, len(want))
	var extra []rules.Rule
	for _, r := range have {
		spec := r.Spec()
		idx := -1
		for i, s := range wantSpecs {
			if !used[i] && s == spec {
				idx = i
				break
			}
		}
		if idx >= 0 {
			used[idx] = true
			if !want[idx].Optional {
				matchedOrder = append(matchedOrder, idx)
			}
			continue
		}
		if builtin && !istioChain(r.Target.Name) {
			continue
		}
		extra = append(extra, r)
	}
	var missing []rules.Rule
	for i, w := range want {
		if !used[i] && !w.Optional {
			missing = append(missing, w.Rule)
		}
	}
	// A missing rule and an extra rule of the same shape (same target, same kinds of match) are one
	// rule written with other values: a changed rule, not a lost one.
	for _, m := range missing {
		pair := -1
		for j, x := range extra {
			if sameShape(m, x) {
				pair = j
				break
			}
		}
		if pair >= 0 {
			d.Changed = append(d.Changed, RuleChange{Expected: m.Spec(), Found: extra[pair].Spec()})
			extra = append(extra[:pair], extra[pair+1:]...)
			continue
		}
		d.Missing = append(d.Missing, m.Spec())
	}
	for _, x := range extra {
		d.Extra = append(d.Extra, x.Spec())
	}
	// Order matters only between rules that do different things: adjacent rules with the same
	// target (a run of RETURNs) give the same result in any order. Istio's native nftables writer
	// interleaves its IPv4 and IPv6 rules differently from iptables within such runs.
	block := make([]int, len(want))
	for i := 1; i < len(want); i++ {
		block[i] = block[i-1]
		if want[i].Rule.Target != want[i-1].Rule.Target {
			block[i]++
		}
	}
	for i := 1; i < len(matchedOrder); i++ {
		if block[matchedOrder[i]] < block[matchedOrder[i-1]] {
			d.OutOfOrder = true
			break
		}
	}
	return d
}

// sameShape reports whether two rules do the same kind of thing to the same kind of packets.
func sameShape(a, b rules.Rule) bool {
	if a.Target.Name != b.Target.Name || a.Target.Goto != b.Target.Goto || len(a.Matches) != len(b.Matches) {
		return false
	}
	for i := range a.Matches {
		if a.Matches[i].Kind != b.Matches[i].Kind || a.Matches[i].Not != b.Matches[i].Not {
			return false
		}
	}
	return true
}

// summary is a one-line description of a chain diff for messages, naming the first rule of each
// kind so a person sees what is wrong without opening the evidence.
func (d ChainDiff) summary() string {
	var parts []string
	switch n := len(d.Missing); {
	case d.Absent:
		parts = append(parts, fmt.Sprintf("chain absent (%d rule(s) missing)", n))
	case d.Emptied:
		parts = append(parts, fmt.Sprintf("chain empty, flushed? (%d rule(s) missing)", n))
	case n > 0:
		parts = append(parts, fmt.Sprintf("%d rule(s) missing%s", n, example(d.Missing[0])))
	}
	if n := len(d.Changed); n > 0 {
		parts = append(parts, fmt.Sprintf("%d rule(s) with other values (want `%s`, found `%s`)", n,
			d.Changed[0].Expected, d.Changed[0].Found))
	}
	if n := len(d.Extra); n > 0 {
		parts = append(parts, fmt.Sprintf("%d unexpected rule(s)%s", n, example(d.Extra[0])))
	}
	if d.OutOfOrder {
		parts = append(parts, "rules out of order")
	}
	return fmt.Sprintf("%s/%s: %s", d.Table, d.Chain, strings.Join(parts, ", "))
}

func example(spec string) string { return " (`" + spec + "`)" }
