package logscan

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Match is one log message that matched a rule.
type Match struct {
	Rule   string         `json:"rule"`
	Code   nodecheck.Code `json:"code"`
	Sample Sample         `json:"sample"`
	// Pod is the pod the message names ("namespace/name"), when the rule knows how to find it.
	Pod string `json:"pod,omitempty"`
}

// Sample is a matching line as evidence: where it is (file and byte offset, for a journal the
// journal file and the entry's offset), when, from whom, and the line itself, bounded.
type Sample struct {
	Source string    `json:"source"`
	Offset int64     `json:"offset"`
	Time   time.Time `json:"time"`
	// Origin is the container ("namespace/pod/container"), the unit or the program that logged it.
	Origin    string `json:"origin,omitempty"`
	Line      string `json:"line"`
	Truncated bool   `json:"truncated,omitempty"`
}

// maxSampleLine bounds a sample line in evidence.
const maxSampleLine = 512

// maxRecent is how many of the most recent samples a condition keeps, beside the first.
const maxRecent = 3

// maxPods bounds the pods a condition lists; more are counted.
const maxPods = 20

// condition aggregates one rule's matches: the evidence of one episode of the problem.
type condition struct {
	Count    int64                   `json:"count"`
	First    time.Time               `json:"firstSeen"`
	Last     time.Time               `json:"lastSeen"`
	FirstHit Sample                  `json:"first"`
	Recent   []Sample                `json:"recent"`
	Pods     map[string]*podEvidence `json:"pods,omitempty"`
	// OtherPods counts matches naming pods beyond maxPods.
	OtherPods int64 `json:"otherPods,omitempty"`
}

type podEvidence struct {
	Count  int64     `json:"count"`
	First  time.Time `json:"firstSeen"`
	Last   time.Time `json:"lastSeen"`
	Sample Sample    `json:"sample"`
}

// episodeOver reports whether a match at t starts a new episode rather than continuing c: a
// transient condition that had cleared, or a persistent one whose evidence had left the window.
func (c *condition) episodeOver(r *compiledRule, t time.Time, window time.Duration) bool {
	gap := t.Sub(c.Last)
	if r.Kind == Transient {
		return gap > time.Duration(r.QuietPeriod)
	}
	return gap > window
}

func (c *condition) add(m Match) {
	s := m.Sample
	if c.Count == 0 || s.Time.Before(c.First) {
		c.First, c.FirstHit = s.Time, s
	}
	if c.Count == 0 || s.Time.After(c.Last) {
		c.Last = s.Time
	}
	c.Count++
	// Keep the maxRecent latest samples, latest last.
	i, _ := slices.BinarySearchFunc(c.Recent, s.Time, func(x Sample, t time.Time) int { return x.Time.Compare(t) })
	c.Recent = slices.Insert(c.Recent, i, s)
	if len(c.Recent) > maxRecent {
		c.Recent = c.Recent[1:]
	}
	if m.Pod == "" {
		return
	}
	if c.Pods == nil {
		c.Pods = map[string]*podEvidence{}
	}
	p := c.Pods[m.Pod]
	if p == nil {
		if len(c.Pods) >= maxPods {
			c.OtherPods++
			return
		}
		p = &podEvidence{First: s.Time, Last: s.Time, Sample: s}
		c.Pods[m.Pod] = p
	}
	p.Count++
	if s.Time.Before(p.First) {
		p.First = s.Time
	}
	if !s.Time.Before(p.Last) {
		p.Last, p.Sample = s.Time, s
	}
}

// boundLine cuts a line for evidence at a rune boundary and drops invalid UTF-8 (binary junk
// would otherwise end up in JSON as replacement characters anyway).
func boundLine(b []byte) (string, bool) {
	cut := false
	if len(b) > maxSampleLine {
		b, cut = b[:maxSampleLine], true
		for len(b) > 0 && !utf8.Valid(b[len(b)-min(len(b), utf8.UTFMax):]) {
			b = b[:len(b)-1]
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD"), cut
}

// finding turns a condition into the report's finding, as of now.
func (c *condition) finding(r *compiledRule, now time.Time) nodecheck.Finding {
	state := "active"
	sev := r.Severity
	ev := map[string]any{
		"rule":      r.Name,
		"kind":      string(r.Kind),
		"count":     c.Count,
		"firstSeen": c.First,
		"lastSeen":  c.Last,
		"samples":   c.samples(),
	}
	msg := fmt.Sprintf("%s: %d matching log %s from %s to %s", r.Message, c.Count,
		plural(c.Count, "line", "lines"), c.First.UTC().Format(time.RFC3339), c.Last.UTC().Format(time.RFC3339))
	if r.Kind == Transient {
		quiet := time.Duration(r.QuietPeriod)
		clears := c.Last.Add(quiet)
		ev["quietPeriod"] = quiet.String()
		if !now.Before(clears) {
			state, sev = "cleared", nodecheck.SeverityInfo
			ev["clearedAt"] = clears
			msg = fmt.Sprintf("%s; cleared: nothing for %s since", msg, quiet)
		} else {
			ev["clearsAt"] = clears
			msg = fmt.Sprintf("%s; still active (clears after %s without a match)", msg, quiet)
		}
	}
	ev["state"] = state
	if pods := c.podList(); len(pods) > 0 {
		ev["pods"] = pods
		names := make([]string, 0, 5)
		for _, p := range pods[:min(5, len(pods))] {
			names = append(names, fmt.Sprintf("%s (%d)", p["pod"], p["count"]))
		}
		more := ""
		if extra := int64(len(pods)-len(names)) + c.OtherPods; extra > 0 {
			more = fmt.Sprintf(" and %d more", extra)
		}
		msg = fmt.Sprintf("%s; pods named: %s%s", msg, strings.Join(names, ", "), more)
	}
	if c.OtherPods > 0 {
		ev["otherPodMatches"] = c.OtherPods
	}
	return nodecheck.Finding{Code: r.Code, Severity: sev, Message: msg, Remedy: r.Remedy, Evidence: ev}
}

// samples are the first matching line and the latest ones, oldest first, without repeats.
func (c *condition) samples() []Sample {
	out := []Sample{c.FirstHit}
	for _, s := range c.Recent {
		if s.Source != c.FirstHit.Source || s.Offset != c.FirstHit.Offset {
			out = append(out, s)
		}
	}
	return out
}

// podList orders the named pods by their latest match, latest first.
func (c *condition) podList() []map[string]any {
	names := make([]string, 0, len(c.Pods))
	for n := range c.Pods {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if d := c.Pods[b].Last.Compare(c.Pods[a].Last); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	out := make([]map[string]any, 0, len(names))
	for _, n := range names {
		p := c.Pods[n]
		out = append(out, map[string]any{"pod": n, "count": p.Count, "firstSeen": p.First, "lastSeen": p.Last, "sample": p.Sample})
	}
	return out
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// cloneConditions copies conditions so a pass can be abandoned without touching what was saved.
func cloneConditions(in map[string]*condition) map[string]*condition {
	out := make(map[string]*condition, len(in))
	for k, c := range in {
		cp := *c
		cp.Recent = slices.Clone(c.Recent)
		if c.Pods != nil {
			cp.Pods = make(map[string]*podEvidence, len(c.Pods))
			for n, p := range c.Pods {
				pc := *p
				cp.Pods[n] = &pc
			}
		}
		out[k] = &cp
	}
	return out
}
