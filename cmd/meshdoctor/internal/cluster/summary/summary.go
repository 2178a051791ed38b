// Package summary folds the stream of node results `meshdoctor cluster` gathers into what a
// person reads (a table) and what a machine reads (JSON written as the nodes come), in memory
// bounded by its options rather than by the number of nodes or pods: counts by finding code, the
// worst nodes, and the first broken pods, node findings and silent nodes in name order.
package summary

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster"
	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster/rootcause"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Defaults of Options.
const (
	DefaultMaxLines = 50
	DefaultTop      = 10
)

// Options bound what the summary keeps.
type Options struct {
	// MaxLines bounds each list: broken pods, node findings, nodes without a report. Every one
	// is counted; the JSON stream has them all.
	MaxLines int
	// Top is how many worst nodes are kept.
	Top int
}

// Summary is the fold. It is not safe for concurrent use: one goroutine adds.
type Summary struct {
	opts     Options
	nodes    NodeCounts
	pods     PodCounts
	codes    map[nodecheck.Code]*CodeCount
	worst    bounded[NodeScore]
	silent   bounded[SilentNode]
	broken   bounded[BrokenPod]
	findings bounded[NodeFinding]
	outage   rootcause.IstiodOutage
	errors   bool
}

// NodeCounts counts nodes by status.
type NodeCounts struct {
	Total           int `json:"total"`
	Reported        int `json:"reported"`
	NoAgent         int `json:"noAgent"`
	AgentNotRunning int `json:"agentNotRunning"`
	NotAnswering    int `json:"notAnswering"`
}

// PodCounts counts the reported pods by verdict.
type PodCounts struct {
	Total   int `json:"total"`
	OK      int `json:"ok"`
	Broken  int `json:"broken"`
	Unknown int `json:"unknown"`
	Skipped int `json:"skipped"`
}

// CodeCount is one finding code across the cluster (errors and warnings only).
type CodeCount struct {
	Code     nodecheck.Code     `json:"code"`
	Severity nodecheck.Severity `json:"severity"` // the worst seen
	Pods     int                `json:"pods"`
	Nodes    int                `json:"nodes"`
}

// NodeScore is one of the worst nodes.
type NodeScore struct {
	Node    string           `json:"node"`
	Broken  int              `json:"broken"`
	Checked int              `json:"checked"`
	Errors  int              `json:"nodeErrors"` // node-level error findings
	Codes   []nodecheck.Code `json:"codes"`
}

// SilentNode is a node without a report.
type SilentNode struct {
	Node   string         `json:"node"`
	Status cluster.Status `json:"status"`
	Agent  string         `json:"agent,omitempty"`
	Error  string         `json:"error,omitempty"`
}

// BrokenPod is one broken pod with the remedy of its root cause: its error finding that comes
// first in rootCauseOrder.
type BrokenPod struct {
	Node   string           `json:"node"`
	Pod    string           `json:"pod"` // namespace/name, or the netns path of a bare netns
	Code   nodecheck.Code   `json:"code"`
	Codes  []nodecheck.Code `json:"codes"`
	Remedy string           `json:"remedy"`
}

// NodeFinding is one node-level error or warning.
type NodeFinding struct {
	Node string `json:"node"`
	nodecheck.Finding
}

// rootCauseOrder ranks codes from cause to symptom, so that a pod's line names what to fix
// first: what removed istio-init's capabilities before istio-init failing, that before the rules
// it could not write.
var rootCauseOrder = []nodecheck.Code{
	nodecheck.PodSecurityBlocksInit, nodecheck.InitMissingNetAdmin,
	nodecheck.IstioCNINotInstalled, nodecheck.IstioCNIIncomplete, nodecheck.IstioCNINodeNotReady,
	nodecheck.IstioCNIErrors, nodecheck.NsenterErrors,
	nodecheck.InitContainerFailed, nodecheck.IptablesBackendMismatch,
	nodecheck.RedirectRulesMissing, nodecheck.RedirectRulesIncomplete, nodecheck.RedirectRulesMismatch,
	nodecheck.IstiodAPIServerUnreachable, nodecheck.ProxyNotReady, nodecheck.AppStartedBeforeProxy,
}

func rank(c nodecheck.Code) int {
	if i := slices.Index(rootCauseOrder, c); i >= 0 {
		return i
	}
	return len(rootCauseOrder)
}

func severityRank(s nodecheck.Severity) int {
	switch s {
	case nodecheck.SeverityError:
		return 0
	case nodecheck.SeverityWarning:
		return 1
	}
	return 2
}

// New returns an empty summary; zero options take the defaults.
func New(o Options) *Summary {
	if o.MaxLines <= 0 {
		o.MaxLines = DefaultMaxLines
	}
	if o.Top <= 0 {
		o.Top = DefaultTop
	}
	return &Summary{
		opts:  o,
		codes: map[nodecheck.Code]*CodeCount{},
		worst: bounded[NodeScore]{limit: o.Top, less: func(a, b NodeScore) int {
			return cmp.Or(b.Broken-a.Broken, b.Errors-a.Errors, strings.Compare(a.Node, b.Node))
		}},
		silent: bounded[SilentNode]{limit: o.MaxLines, less: func(a, b SilentNode) int { return strings.Compare(a.Node, b.Node) }},
		broken: bounded[BrokenPod]{limit: o.MaxLines, less: func(a, b BrokenPod) int {
			return cmp.Or(strings.Compare(a.Node, b.Node), strings.Compare(a.Pod, b.Pod))
		}},
		findings: bounded[NodeFinding]{limit: o.MaxLines, less: func(a, b NodeFinding) int {
			return cmp.Or(severityRank(a.Severity)-severityRank(b.Severity), strings.Compare(string(a.Code), string(b.Code)),
				strings.Compare(a.Node, b.Node))
		}},
	}
}

// Add folds one node's result in. The result's report is not kept.
func (s *Summary) Add(r cluster.NodeResult) {
	s.nodes.Total++
	switch r.Status {
	case cluster.StatusReported:
		s.nodes.Reported++
	case cluster.StatusNoAgent:
		s.nodes.NoAgent++
	case cluster.StatusAgentNotRunning:
		s.nodes.AgentNotRunning++
	default:
		s.nodes.NotAnswering++
	}
	if r.Status != cluster.StatusReported || r.Report == nil {
		s.silent.add(SilentNode{Node: r.Node, Status: r.Status, Agent: r.Agent, Error: r.Error})
		return
	}
	rep := r.Report
	score := NodeScore{Node: r.Node, Checked: len(rep.Pods)}
	onNode := map[nodecheck.Code]bool{}
	count := func(f nodecheck.Finding, pods map[nodecheck.Code]bool) {
		if f.Severity == nodecheck.SeverityError {
			s.errors = true
		}
		if f.Severity != nodecheck.SeverityError && f.Severity != nodecheck.SeverityWarning {
			return
		}
		c, ok := s.codes[f.Code]
		if !ok {
			c = &CodeCount{Code: f.Code, Severity: f.Severity}
			s.codes[f.Code] = c
		}
		if severityRank(f.Severity) < severityRank(c.Severity) {
			c.Severity = f.Severity
		}
		if pods != nil && !pods[f.Code] {
			pods[f.Code] = true
			c.Pods++
		}
		if !onNode[f.Code] {
			onNode[f.Code] = true
			c.Nodes++
		}
	}
	for _, p := range rep.Pods {
		s.pods.Total++
		switch p.Verdict {
		case nodecheck.VerdictOK:
			s.pods.OK++
		case nodecheck.VerdictBroken:
			s.pods.Broken++
			score.Broken++
		case nodecheck.VerdictSkipped:
			s.pods.Skipped++
		default:
			s.pods.Unknown++
		}
		pod := map[nodecheck.Code]bool{}
		for _, f := range p.Findings {
			count(f, pod)
		}
		if p.Verdict == nodecheck.VerdictBroken {
			s.broken.add(brokenPod(r.Node, p))
		}
	}
	for _, f := range rep.Findings {
		count(f, nil)
		s.outage.Add(r.Node, f)
		if f.Severity == nodecheck.SeverityError {
			score.Errors++
		}
		if f.Severity == nodecheck.SeverityError || f.Severity == nodecheck.SeverityWarning {
			f.Evidence = nil // the JSON stream has it; the summary keeps the words
			s.findings.add(NodeFinding{Node: r.Node, Finding: f})
		}
	}
	if score.Broken > 0 || score.Errors > 0 {
		score.Codes = slices.Sorted(maps.Keys(onNode))
		s.worst.add(score)
	}
}

func brokenPod(node string, p nodecheck.PodReport) BrokenPod {
	name := p.Netns
	if p.Name != "" {
		name = p.Namespace + "/" + p.Name
	}
	b := BrokenPod{Node: node, Pod: name}
	var best *nodecheck.Finding
	for i, f := range p.Findings {
		if f.Severity != nodecheck.SeverityError {
			continue
		}
		if !slices.Contains(b.Codes, f.Code) {
			b.Codes = append(b.Codes, f.Code)
		}
		if best == nil || rank(f.Code) < rank(best.Code) {
			best = &p.Findings[i]
		}
	}
	slices.SortStableFunc(b.Codes, func(x, y nodecheck.Code) int { return rank(x) - rank(y) })
	if best != nil {
		b.Code, b.Remedy = best.Code, best.Remedy
	}
	return b
}

// Outage is istiod's outages as the nodes reported them, for rootcause.APIServerAvailability.
func (s *Summary) Outage() rootcause.IstiodOutage { return s.outage }

// Result is the summary as the JSON's "summary" and the table show it.
type Result struct {
	Nodes NodeCounts  `json:"nodes"`
	Pods  PodCounts   `json:"pods"`
	Codes []CodeCount `json:"codes"`
	// WorstNodes are the nodes with the most broken pods (then node-level errors).
	WorstNodes         []NodeScore   `json:"worstNodes"`
	BrokenPods         []BrokenPod   `json:"brokenPods"`
	OtherBrokenPods    int           `json:"otherBrokenPods,omitempty"`
	NodeFindings       []NodeFinding `json:"nodeFindings"`
	OtherNodeFindings  int           `json:"otherNodeFindings,omitempty"`
	NodesWithoutReport []SilentNode  `json:"nodesWithoutReport"`
	OtherSilentNodes   int           `json:"otherNodesWithoutReport,omitempty"`
	// HasErrors is set when a pod or node finding has severity error.
	HasErrors bool `json:"hasErrors"`
}

// Result returns the summary so far.
func (s *Summary) Result() Result {
	codes := make([]CodeCount, 0, len(s.codes))
	for _, c := range s.codes {
		codes = append(codes, *c)
	}
	slices.SortFunc(codes, func(a, b CodeCount) int {
		return cmp.Or(severityRank(a.Severity)-severityRank(b.Severity), b.Pods-a.Pods, b.Nodes-a.Nodes,
			strings.Compare(string(a.Code), string(b.Code)))
	})
	return Result{
		Nodes: s.nodes, Pods: s.pods, Codes: codes,
		WorstNodes: s.worst.items(),
		BrokenPods: s.broken.items(), OtherBrokenPods: s.broken.dropped,
		NodeFindings: s.findings.items(), OtherNodeFindings: s.findings.dropped,
		NodesWithoutReport: s.silent.items(), OtherSilentNodes: s.silent.dropped,
		HasErrors: s.errors,
	}
}

// bounded keeps the limit first items in less's order, whatever order they come in, and counts
// the others.
type bounded[T any] struct {
	limit   int
	less    func(a, b T) int
	list    []T
	dropped int
}

func (b *bounded[T]) add(v T) {
	i, _ := slices.BinarySearchFunc(b.list, v, b.less)
	if len(b.list) < b.limit {
		b.list = slices.Insert(b.list, i, v)
		return
	}
	b.dropped++
	if i < len(b.list) {
		b.list = slices.Insert(b.list[:len(b.list)-1], i, v)
	}
}

func (b *bounded[T]) items() []T {
	if b.list == nil {
		return []T{}
	}
	return slices.Clone(b.list)
}
