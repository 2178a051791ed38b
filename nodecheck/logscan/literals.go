package logscan

import (
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"
)

// Literal pre-filtering: a regular expression is only run on a line that contains one of a set of
// strings every match must contain. Finding those strings is a SIMD-fast bytes.Index over a whole
// buffer, while Go's regexp engine runs at tens of MB/s; with the pre-filter the regexp runs on a
// handful of candidate lines and the scan goes at memory speed.

// minLiteral is the shortest literal worth searching for: shorter ones hit nearly every line.
const minLiteral = 3

// maxLiterals bounds a set of alternatives (and the cross products computed on the way).
const maxLiterals = 16

// maxClass is the largest character class expanded into alternatives ([Ff]ailed).
const maxClass = 4

// requiredLiterals returns strings of which at least one occurs in every match of re, or nil
// when no useful set is known (the regexp then runs on every message).
func requiredLiterals(re *syntax.Regexp) []string {
	info := analyze(re)
	set := info.required()
	if len(set) == 0 || len(set) > maxLiterals {
		return nil
	}
	for _, s := range set {
		if len(s) < minLiteral {
			return nil
		}
	}
	// A string containing another of the set adds nothing: the shorter one finds its lines.
	slices.SortFunc(set, func(a, b string) int { return len(a) - len(b) })
	var out []string
	for _, s := range set {
		if !slices.ContainsFunc(out, func(o string) bool { return strings.Contains(s, o) }) {
			out = append(out, s)
		}
	}
	return out
}

// litInfo is what is known of the strings a node matches: exact, the complete finite set of
// them (nil when unknown or too large); req, a set of which every match contains one.
type litInfo struct {
	exact []string
	req   []string
}

func (i litInfo) required() []string {
	if i.exact != nil {
		return i.exact
	}
	return i.req
}

func analyze(re *syntax.Regexp) litInfo {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase == 0 {
			return litInfo{exact: []string{string(re.Rune)}}
		}
		// Case-folded ([Ff]ailed parses as a folded F): expand while the variants stay few.
		set := []string{""}
		for _, r := range re.Rune {
			orbit := []string{string(r)}
			for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
				orbit = append(orbit, string(f))
			}
			if set = cross(set, orbit); set == nil {
				return litInfo{}
			}
		}
		return litInfo{exact: set}
	case syntax.OpCharClass:
		// Rune pairs [lo, hi]; expand a small class.
		var set []string
		for i := 0; i+1 < len(re.Rune); i += 2 {
			for r := re.Rune[i]; r <= re.Rune[i+1]; r++ {
				if len(set) >= maxClass {
					return litInfo{}
				}
				set = append(set, string(r))
			}
		}
		if len(set) == 0 {
			return litInfo{}
		}
		return litInfo{exact: set}
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText,
		syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return litInfo{exact: []string{""}}
	case syntax.OpCapture:
		return analyze(re.Sub[0])
	case syntax.OpPlus:
		return litInfo{req: analyze(re.Sub[0]).required()}
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return litInfo{req: analyze(re.Sub[0]).required()}
		}
		return litInfo{}
	case syntax.OpConcat:
		return analyzeConcat(re.Sub)
	case syntax.OpAlternate:
		var exact, req []string
		exactOK := true
		for _, sub := range re.Sub {
			info := analyze(sub)
			if info.exact == nil {
				exactOK = false
			} else {
				exact = append(exact, info.exact...)
			}
			r := info.required()
			if r == nil {
				return litInfo{}
			}
			req = append(req, r...)
		}
		out := litInfo{req: dedupe(req)}
		if exactOK && len(exact) <= maxLiterals {
			out.exact = dedupe(exact)
		}
		if len(out.req) > maxLiterals {
			out.req = nil
		}
		return out
	}
	return litInfo{}
}

// analyzeConcat builds, for each run of consecutive children whose exact sets are known, the cross
// product of those sets (a required set), and keeps the most selective of those and of the
// children's own required sets.
func analyzeConcat(subs []*syntax.Regexp) litInfo {
	infos := make([]litInfo, len(subs))
	for i, s := range subs {
		infos[i] = analyze(s)
	}
	var best []string
	consider := func(set []string) {
		if set != nil && len(set) <= maxLiterals && (best == nil || betterSet(set, best)) {
			best = set
		}
	}
	allExact := true
	var run []string
	inRun := false
	for _, info := range infos {
		if info.exact == nil {
			allExact = false
			if inRun {
				consider(run)
				inRun = false
			}
			consider(info.req)
			continue
		}
		if !inRun {
			run, inRun = []string{""}, true
		}
		run = cross(run, info.exact)
		if run == nil {
			// Too many combinations: keep what the run had and start again from here.
			inRun = false
			consider(info.exact)
		}
	}
	if inRun {
		consider(run)
		if allExact {
			return litInfo{exact: run}
		}
	}
	return litInfo{req: best}
}

func cross(a, b []string) []string {
	if len(a)*len(b) > maxLiterals {
		return nil
	}
	out := make([]string, 0, len(a)*len(b))
	for _, x := range a {
		for _, y := range b {
			out = append(out, x+y)
		}
	}
	return dedupe(out)
}

// betterSet prefers the set whose shortest string is longest, then the smaller set.
func betterSet(a, b []string) bool {
	ma, mb := minLen(a), minLen(b)
	if ma != mb {
		return ma > mb
	}
	return len(a) < len(b)
}

func minLen(set []string) int {
	m := -1
	for _, s := range set {
		if m < 0 || len(s) < m {
			m = len(s)
		}
	}
	return m
}

func dedupe(set []string) []string {
	seen := make(map[string]bool, len(set))
	out := make([]string, 0, len(set))
	for _, s := range set {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
