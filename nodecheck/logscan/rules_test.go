package logscan

import (
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

func TestDefaultRules(t *testing.T) {
	rs, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	codes := map[nodecheck.Code]bool{}
	for _, r := range rs.rules {
		codes[r.Code] = true
		// Every default rule must have a pre-filter, or it would run its regexp on every line.
		if len(r.literals) == 0 {
			t.Errorf("rule %s has no literal pre-filter", r.Name)
		}
		if !slices.Contains(nodecheck.AllCodes(), r.Code) {
			t.Errorf("rule %s: code %s is not a contract code", r.Name, r.Code)
		}
		if r.Remedy == "" {
			t.Errorf("rule %s has no remedy", r.Name)
		}
	}
	for _, c := range []nodecheck.Code{nodecheck.IstiodAPIServerUnreachable, nodecheck.IstioCNIErrors, nodecheck.NsenterErrors} {
		if !codes[c] {
			t.Errorf("no default rule for %s", c)
		}
	}
}

func TestRequiredLiterals(t *testing.T) {
	cases := []struct {
		pattern string
		want    []string
	}{
		{`error.*cannot list resource`, []string{"cannot list resource"}},
		{`Failed to watch .*(connection refused|i/o timeout)`, []string{"Failed to watch "}},
		{`error.*cannot list resource|Failed to watch`, []string{"Failed to watch", "cannot list resource"}},
		{`nsenter: (cannot open|failed to execute)`, []string{"nsenter: cannot open", "nsenter: failed to execute"}},
		{`[Ff]ailed to get pod`, []string{"Failed to get pod", "failed to get pod"}},
		{`\bpod=[a-z]+`, []string{"pod="}},
		{`(?i)failed`, nil},                   // case-folded: no byte literal
		{`a|bc`, nil},                         // too short to be worth it
		{`foo.*|bar`, []string{"bar", "foo"}}, // foo.* still contains foo
		{`x*`, nil},
		{`(abc)+defg`, []string{"defg"}},
		{`(abc){2,}`, []string{"abc"}},
		{`(abc)?def`, []string{"def"}},
		{`^$`, nil},
		{`[a-z]+`, nil},
	}
	for _, c := range cases {
		re, err := syntax.Parse(c.pattern, syntax.Perl)
		if err != nil {
			t.Fatal(err)
		}
		got := requiredLiterals(re.Simplify())
		slices.Sort(got)
		want := slices.Clone(c.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", c.pattern, got, want)
		}
	}
}

// FuzzRequiredLiterals checks the pre-filter is sound: whenever a pattern matches a text, the
// text contains one of the pattern's required literals. An unsound pre-filter would silently
// drop evidence.
func FuzzRequiredLiterals(f *testing.F) {
	for _, s := range [][2]string{
		{`error.*cannot list resource|Failed to watch .*(connection refused|i/o timeout)`, "x error y cannot list resource z"},
		{`nsenter: (cannot open|can't)`, "nsenter: can't open"},
		{`[Ff]ailed (to|at) (get|put)`, "failed at put"},
		{`(ab|cd)(ef|gh)(ij|kl)`, "cdghij"},
		{`a(b|c)*d`, "abcbd"},
		{`\bpod=(?P<ns>[a-z]+)`, "x pod=abc"},
		{`(abc)?def`, "def"},
	} {
		f.Add(s[0], s[1])
	}
	// The default rules' patterns against the real programs' lines each matches.
	rs, err := ParseRules(defaultRulesYAML)
	if err != nil {
		f.Fatal(err)
	}
	lines := realLines(f)
	for _, r := range rs.rules {
		for _, l := range lines {
			if r.re.MatchString(l) {
				f.Add(r.re.String(), l)
			}
		}
	}
	f.Fuzz(func(t *testing.T, pattern, text string) {
		re, err := regexp.Compile(pattern)
		if err != nil {
			return
		}
		parsed, err := syntax.Parse(pattern, syntax.Perl)
		if err != nil {
			return
		}
		lits := requiredLiterals(parsed.Simplify())
		if lits == nil || !re.MatchString(text) {
			return
		}
		for _, l := range lits {
			if strings.Contains(text, l) {
				return
			}
		}
		t.Fatalf("%q matches %q but contains none of the literals %q", pattern, text, lits)
	})
}

func TestParseRulesErrors(t *testing.T) {
	base := `
rules:
  - name: r
    code: IstioCNIErrors
    severity: error
    kind: persistent
    sources: [{type: journal}]
    pattern: 'istio-cni cmdAdd error'
    message: m
`
	if _, err := ParseRules([]byte(base)); err != nil {
		t.Fatalf("base rule: %v", err)
	}
	cases := map[string]struct{ from, to string }{
		"unknown field":         {"message: m", "message: m\n    messge: typo"},
		"bad regexp":            {"'istio-cni cmdAdd error'", "'istio-cni (cmdAdd'"},
		"bad code":              {"IstioCNIErrors", "istio cni"},
		"bad severity":          {"severity: error", "severity: fatal"},
		"transient no quiet":    {"kind: persistent", "kind: transient"},
		"persistent with quiet": {"kind: persistent", "kind: persistent\n    quietPeriod: 5m"},
		"bad kind":              {"kind: persistent", "kind: sometimes"},
		"bad duration":          {"kind: persistent", "kind: transient\n    quietPeriod: soon"},
		"no sources":            {"sources: [{type: journal}]", "sources: []"},
		"bad source type":       {"type: journal", "type: kafka"},
		"pod field on journal":  {"type: journal", "type: journal, pod: x"},
		"bad glob":              {"type: journal", "type: journal, units: ['[']"},
		"no message":            {"message: m", "message: ''"},
		"pod pattern no groups": {"message: m", "message: m\n    podPatterns: ['pod=\\S+']"},
		"empty literal":         {"message: m", "message: m\n    literals: ['']"},
		"not yaml":              {"rules:", "rules: ["},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			doc := strings.Replace(base, c.from, c.to, 1)
			if doc == base {
				t.Fatalf("case does not change the document")
			}
			if _, err := ParseRules([]byte(doc)); err == nil {
				t.Fatalf("want an error for:\n%s", doc)
			}
		})
	}
	if _, err := ParseRules([]byte(base + strings.Replace(base, "rules:\n", "", 1))); err == nil {
		t.Error("duplicate rule names accepted")
	}
	if _, err := ParseRules([]byte("rules: []")); err == nil {
		t.Error("empty rule file accepted")
	}
}

// FuzzParseRules: the rule loader never panics on any input, and a rule set it accepts is usable
// (its rules match and find pods without panicking).
func FuzzParseRules(f *testing.F) {
	f.Add(defaultRulesYAML, "2026-08-27T12:45:20Z\terror\tcni-plugin\tistio-cni cmdAdd error: boom\tpod=shop/cart-1")
	f.Add([]byte("rules:\n- {name: a, code: A, severity: info, kind: transient, quietPeriod: 1s, sources: [{type: syslog}], pattern: x+, message: m}\n"), "xxx")
	f.Add([]byte("rules: [{name: a}]"), "")
	f.Add([]byte("{"), "")
	f.Fuzz(func(t *testing.T, data []byte, line string) {
		rs, err := ParseRules(data)
		if err != nil {
			return
		}
		for _, r := range rs.rules {
			if r.re.MatchString(line) {
				_ = r.pod([]byte(line))
			}
			_ = r.mayMatch([]byte(line))
			_ = r.wantsPod("ns", "pod", "c")
			_ = r.wantsJournal("u", "i", "c")
			_ = r.wantsSyslog("p")
		}
	})
}
