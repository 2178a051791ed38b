package logscan

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"regexp/syntax"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

//go:embed default-rules.yaml
var defaultRulesYAML []byte

// DefaultRulesYAML returns the embedded default rules, the file `--log-rules` replaces; printing it
// is the easiest way to start a custom rules file.
func DefaultRulesYAML() []byte { return append([]byte(nil), defaultRulesYAML...) }

// Kind says how a condition ends. A transient condition (istiod losing the API server while it
// restarts) clears by itself once its rule has been quiet for QuietPeriod; a persistent one stays
// as long as its evidence is inside the look-back window.
type Kind string

// Kinds of rules.
const (
	Transient  Kind = "transient"
	Persistent Kind = "persistent"
)

// SourceType names where a rule looks.
type SourceType string

// Source types.
const (
	// SourcePod is a container log kubelet writes under /var/log/pods (CRI format).
	SourcePod SourceType = "pod"
	// SourceJournal is the systemd journal.
	SourceJournal SourceType = "journal"
	// SourceSyslog is a plain syslog file (/var/log/syslog, /var/log/messages).
	SourceSyslog SourceType = "syslog"
)

// Duration is a time.Duration written as "10m" in rule files.
type Duration time.Duration

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"10m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Selector says which logs a rule reads. Empty fields match anything; names are globs (path.Match).
type Selector struct {
	Type SourceType `json:"type"`
	// Namespace, Pod and Container select container logs (type pod).
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	// Units select journal entries by _SYSTEMD_UNIT (type journal).
	Units []string `json:"units,omitempty"`
	// Identifiers select journal entries by SYSLOG_IDENTIFIER or _COMM, and syslog lines by the
	// program name before "[pid]:" (types journal and syslog).
	Identifiers []string `json:"identifiers,omitempty"`
}

// Rule is one log pattern whose matches are evidence of a finding.
type Rule struct {
	Name     string             `json:"name"`
	Code     nodecheck.Code     `json:"code"`
	Severity nodecheck.Severity `json:"severity"`
	Kind     Kind               `json:"kind"`
	// QuietPeriod is how long a transient rule must stay silent before its condition clears.
	QuietPeriod Duration   `json:"quietPeriod,omitempty"`
	Sources     []Selector `json:"sources"`
	// Pattern is an RE2 regular expression matched against each log message.
	Pattern string `json:"pattern"`
	// Literals, when set, replace the pre-filter derived from Pattern: a message is tried against
	// Pattern only when it contains one of them. They must be such that every match contains one.
	Literals []string `json:"literals,omitempty"`
	// PodPatterns find the pod a matching line is about: named groups namespace and name, or pod
	// ("namespace/name"). The first that matches wins.
	PodPatterns []string `json:"podPatterns,omitempty"`
	Message     string   `json:"message"`
	Remedy      string   `json:"remedy,omitempty"`
}

// RuleFile is the YAML document `--log-rules` reads.
type RuleFile struct {
	Rules []Rule `json:"rules"`
}

// RuleSet is a validated, compiled list of rules.
type RuleSet struct {
	rules []*compiledRule
}

type compiledRule struct {
	Rule
	index    int
	re       *regexp.Regexp
	literals [][]byte // nil: no pre-filter, the regexp runs on every message
	pods     []*regexp.Regexp
}

// Rules returns the rules as loaded.
func (s *RuleSet) Rules() []Rule {
	out := make([]Rule, len(s.rules))
	for i, r := range s.rules {
		out[i] = r.Rule
	}
	return out
}

// DefaultRules returns the embedded default rules.
func DefaultRules() (*RuleSet, error) {
	rs, err := ParseRules(defaultRulesYAML)
	if err != nil {
		return nil, fmt.Errorf("embedded default log rules: %w", err)
	}
	return rs, nil
}

// maxRules bounds a rule file: per-file rule sets are bit masks of this width.
const maxRules = 64

// ParseRules reads and validates a YAML rule file. Unknown fields are errors, so a typo never
// silently disables a rule.
func ParseRules(data []byte) (*RuleSet, error) {
	var f RuleFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parsing log rules: %w", err)
	}
	if len(f.Rules) == 0 {
		return nil, errors.New("log rules: no rules")
	}
	if len(f.Rules) > maxRules {
		return nil, fmt.Errorf("log rules: %d rules, at most %d", len(f.Rules), maxRules)
	}
	rs := &RuleSet{}
	seen := map[string]bool{}
	for i, r := range f.Rules {
		cr, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("log rule %d (%q): %w", i, r.Name, err)
		}
		if seen[r.Name] {
			return nil, fmt.Errorf("log rule %d: duplicate name %q", i, r.Name)
		}
		seen[r.Name] = true
		cr.index = i
		rs.rules = append(rs.rules, cr)
	}
	return rs, nil
}

func compileRule(r Rule) (*compiledRule, error) {
	if r.Name == "" {
		return nil, errors.New("name is required")
	}
	if r.Code == "" || !isCamelCase(string(r.Code)) {
		return nil, fmt.Errorf("code %q must be a CamelCase finding code", r.Code)
	}
	switch r.Severity {
	case nodecheck.SeverityError, nodecheck.SeverityWarning, nodecheck.SeverityInfo:
	default:
		return nil, fmt.Errorf("severity %q: want error, warning or info", r.Severity)
	}
	switch r.Kind {
	case Transient:
		if r.QuietPeriod <= 0 {
			return nil, errors.New("a transient rule needs a positive quietPeriod")
		}
	case Persistent:
		if r.QuietPeriod != 0 {
			return nil, errors.New("quietPeriod only applies to transient rules")
		}
	default:
		return nil, fmt.Errorf("kind %q: want transient or persistent", r.Kind)
	}
	if r.Message == "" {
		return nil, errors.New("message is required")
	}
	if len(r.Sources) == 0 {
		return nil, errors.New("at least one source is required")
	}
	for i, s := range r.Sources {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("source %d: %w", i, err)
		}
	}
	if r.Pattern == "" {
		return nil, errors.New("pattern is required")
	}
	re, err := regexp.Compile(r.Pattern)
	if err != nil {
		return nil, fmt.Errorf("pattern: %w", err)
	}
	cr := &compiledRule{Rule: r, re: re}
	if len(r.Literals) > 0 {
		for _, l := range r.Literals {
			if l == "" {
				return nil, errors.New("literals must not be empty strings")
			}
			cr.literals = append(cr.literals, []byte(l))
		}
	} else {
		parsed, err := syntax.Parse(r.Pattern, syntax.Perl)
		if err != nil {
			return nil, fmt.Errorf("pattern: %w", err)
		}
		for _, l := range requiredLiterals(parsed.Simplify()) {
			cr.literals = append(cr.literals, []byte(l))
		}
	}
	for i, p := range r.PodPatterns {
		pre, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("podPatterns[%d]: %w", i, err)
		}
		names := map[string]bool{}
		for _, n := range pre.SubexpNames() {
			names[n] = true
		}
		if !names["pod"] && !(names["namespace"] && names["name"]) {
			return nil, fmt.Errorf("podPatterns[%d]: needs named groups (?P<namespace>…) and (?P<name>…), or (?P<pod>…)", i)
		}
		cr.pods = append(cr.pods, pre)
	}
	return cr, nil
}

func (s Selector) validate() error {
	globs := []string{s.Namespace, s.Pod, s.Container}
	globs = append(globs, s.Units...)
	globs = append(globs, s.Identifiers...)
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("glob %q: %w", g, err)
		}
	}
	switch s.Type {
	case SourcePod:
		if len(s.Units) > 0 || len(s.Identifiers) > 0 {
			return errors.New("units and identifiers do not apply to pod logs")
		}
	case SourceJournal:
		if s.Namespace != "" || s.Pod != "" || s.Container != "" {
			return errors.New("namespace, pod and container apply to pod logs only")
		}
	case SourceSyslog:
		if s.Namespace != "" || s.Pod != "" || s.Container != "" || len(s.Units) > 0 {
			return errors.New("syslog sources select by identifiers only")
		}
	default:
		return fmt.Errorf("type %q: want pod, journal or syslog", s.Type)
	}
	return nil
}

// isCamelCase accepts codes like Kubernetes event reasons: a capital letter then letters and digits.
func isCamelCase(s string) bool {
	for i, c := range s {
		switch {
		case c >= 'A' && c <= 'Z':
		case i > 0 && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9'):
		default:
			return false
		}
	}
	return s != ""
}

// glob matches name against pattern; an empty pattern matches anything. Patterns were validated.
func glob(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	ok, _ := path.Match(pattern, name)
	return ok
}

func globAny(patterns []string, names ...string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		for _, n := range names {
			if n != "" && glob(p, n) {
				return true
			}
		}
	}
	return false
}

// wantsPod reports whether the rule reads the given container's log.
func (r *compiledRule) wantsPod(namespace, pod, container string) bool {
	for _, s := range r.Sources {
		if s.Type == SourcePod && glob(s.Namespace, namespace) && glob(s.Pod, pod) && glob(s.Container, container) {
			return true
		}
	}
	return false
}

// wantsJournal reports whether the rule reads a journal entry of this unit and identifier.
func (r *compiledRule) wantsJournal(unit, identifier, comm string) bool {
	for _, s := range r.Sources {
		if s.Type == SourceJournal && globAny(s.Units, unit) && globAny(s.Identifiers, identifier, comm) {
			return true
		}
	}
	return false
}

// wantsSyslog reports whether the rule reads a syslog line of this program.
func (r *compiledRule) wantsSyslog(program string) bool {
	for _, s := range r.Sources {
		if s.Type == SourceSyslog && globAny(s.Identifiers, program) {
			return true
		}
	}
	return false
}

// readsType reports whether any of the rule's sources has this type.
func (r *compiledRule) readsType(t SourceType) bool {
	for _, s := range r.Sources {
		if s.Type == t {
			return true
		}
	}
	return false
}

// pod finds the pod a matching line names, as "namespace/name", or "".
func (r *compiledRule) pod(line []byte) string {
	for _, re := range r.pods {
		m := re.FindSubmatch(line)
		if m == nil {
			continue
		}
		var ns, name, pod string
		for i, n := range re.SubexpNames() {
			switch n {
			case "namespace":
				ns = string(m[i])
			case "name":
				name = string(m[i])
			case "pod":
				pod = string(m[i])
			}
		}
		if pod == "" && ns != "" && name != "" {
			pod = ns + "/" + name
		}
		if pod != "" && strings.Count(pod, "/") == 1 {
			return pod
		}
	}
	return ""
}
