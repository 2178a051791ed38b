package xtlegacy

import (
	"fmt"
	"strconv"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/xt"
)

// decodeMatch appends what a match extension says to the rule; what the shared decoder cannot
// read is kept as one MatchOther with the extension's raw data.
func decodeMatch(family rules.Family, name string, rev uint8, data []byte, r *rules.Rule) {
	if ms, err := xt.Match(family, name, uint32(rev), data); err == nil {
		r.Matches = append(r.Matches, ms...)
		return
	}
	r.Matches = append(r.Matches, rules.Match{
		Kind:  rules.MatchOther,
		Value: fmt.Sprintf("-m %s (rev %d)%s", name, rev, rawData(data)),
	})
}

// decodeTarget decodes a rule's target: a verdict, a jump or goto to a user chain, nothing (a
// rule without -j), or an extension.
func decodeTarget(l *entryLayout, family rules.Family, e entry, chainStarts map[int]string) (rules.Target, error) {
	if e.tname == standardTargetName {
		if len(e.b)-e.target < standardTargetSize || ne.Uint16(e.b[e.target:]) != standardTargetSize {
			return rules.Target{}, corrupt("standard target of size %d", ne.Uint16(e.b[e.target:]))
		}
		v, _ := standardVerdict(e)
		switch {
		case v < 0:
			return rules.Target{Name: verdictName(v)}, nil
		case int(v) == e.off+len(e.b):
			// libiptc's "fallthrough": a rule without -j continues at the next entry.
			return rules.Target{}, nil
		}
		if name, ok := chainStarts[int(v)]; ok {
			return rules.Target{Name: name, Goto: e.b[l.flags]&l.flagGoto != 0}, nil
		}
		// The kernel accepts a jump into the middle of a chain; iptables never writes one and no
		// chain name can say it.
		return rules.Target{Name: "?jump", Args: "to offset " + strconv.Itoa(int(v))}, nil
	}
	if t, err := xt.Target(family, e.tname, uint32(e.trev), e.tdata); err == nil {
		return t, nil
	}
	// What the shared decoder cannot read is kept raw: enough to tell two such targets apart.
	return rules.Target{Name: e.tname, Args: fmt.Sprintf("(rev %d)%s", e.trev, rawData(e.tdata))}, nil
}
