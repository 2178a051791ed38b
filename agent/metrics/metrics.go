// Package metrics exposes the agent's state to Prometheus on a registry of its own: pods by
// verdict and capture state, the node's capture coverage and findings by code are computed from
// the agent's state at scrape time (nothing to keep in step, nothing done between scrapes); check
// runs and log matches are counted as they happen. Labels are bounded (verdict, capture, mode,
// code, severity, check, result, rule); per-pod series only when asked for.
package metrics

import (
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Source is the agent's state as the metrics read it.
type Source interface {
	Pods() []agent.PodState
	Node() agent.NodeState
	LastSweep() time.Time
}

// Options says what to expose beyond the defaults.
type Options struct {
	Version string
	// Checks and LogRules name every check and log rule, so their series exist from the start.
	Checks   []string
	LogRules []string
	// PerPod adds meshdoctor_pod_verdict{namespace,pod,verdict}: one series per pod, off by
	// default because its cardinality follows the node's pods.
	PerPod bool
}

// Metrics is the agent's registry and the instruments fed by the agent.
type Metrics struct {
	Registry *prometheus.Registry
	checks   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	logs     *prometheus.CounterVec
	mu       sync.Mutex
	rules    map[string]bool
	perPod   bool
}

var verdicts = []nodecheck.Verdict{nodecheck.VerdictOK, nodecheck.VerdictBroken, nodecheck.VerdictUnknown, nodecheck.VerdictSkipped}

// Capture states, the capture label of meshdoctor_pods: how far a pod's capture is proven. Rules
// that read right are not proof (a rule elsewhere can defeat them); only traffic is.
const (
	captureVerified   = "verified"   // verdict ok, and a traffic canary proved the capture
	captureBroken     = "broken"     // verdict broken
	captureUnverified = "unverified" // meant to be captured, not proven: ok by rules only, or unknown
	captureNone       = "none"       // not meant to be captured (verdict skipped)
)

// modes are the values of the mode label (the report's capture.mode); any other is counted as none,
// so that the label stays bounded whatever a check writes there.
var modes = []string{"sidecar-redirect", "sidecar-tproxy", "ambient", "none"}
var severities = []nodecheck.Severity{nodecheck.SeverityError, nodecheck.SeverityWarning, nodecheck.SeverityInfo}

// New builds the registry and the instruments the agent feeds as it runs; Watch adds the gauges
// computed from the agent's state.
func New(o Options) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshdoctor_checks_total",
			Help: "Check runs by check and result (ok, findings, error).",
		}, []string{"check", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshdoctor_check_duration_seconds",
			Help:    "How long one run of a check took, on one pod or on the node.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"check"}),
		logs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshdoctor_log_matches_total",
			Help: "Node log messages that matched a log rule, by rule.",
		}, []string{"rule"}),
		rules: map[string]bool{},
	}
	m.Declare(o.Checks, o.LogRules)
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshdoctor_build_info",
		Help: "meshdoctor's version and Go version; always 1.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(o.Version, runtime.Version()).Set(1)
	m.Registry.MustRegister(m.checks, m.duration, m.logs, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.perPod = o.PerPod
	return m
}

// Watch exposes the gauges of src's state (pods by verdict, findings, last sweep), computed at
// scrape time. Call it once.
func (m *Metrics) Watch(src Source) {
	m.Registry.MustRegister(&stateCollector{src: src, perPod: m.perPod})
}

// Declare names checks and log rules, so that their series exist from the start (at zero) and a
// log match of another rule counts as "other".
func (m *Metrics) Declare(checks, logRules []string) {
	for _, c := range checks {
		for _, r := range []string{"ok", "findings", "error"} {
			m.checks.WithLabelValues(c, r)
		}
		m.duration.WithLabelValues(c)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range logRules {
		m.logs.WithLabelValues(r)
		m.rules[r] = true
	}
}

// CheckRun counts one check run.
func (m *Metrics) CheckRun(r nodecheck.CheckRun) {
	m.checks.WithLabelValues(r.Check, r.Result).Inc()
	m.duration.WithLabelValues(r.Check).Observe(r.Duration.Seconds())
}

// LogMatch counts one log match. Rule names come from the rule files, a bounded set; an unknown
// name is counted as "other" so that a bad rule file cannot grow the series.
func (m *Metrics) LogMatch(rule string) {
	m.mu.Lock()
	known := m.rules[rule]
	m.mu.Unlock()
	if !known {
		rule = "other"
	}
	m.logs.WithLabelValues(rule).Inc()
}

var (
	podsDesc = prometheus.NewDesc("meshdoctor_pods",
		"Pods on the node by verdict of their last check, capture state (verified: ok and proven "+
			"by traffic; broken; unverified: meant to be captured but not proven by traffic; none: "+
			"not meant to be captured) and capture mode.",
		[]string{"verdict", "capture", "mode"}, nil)
	coverageDesc = prometheus.NewDesc("meshdoctor_capture_verified_ratio",
		"Fraction of the node's pods meant to be captured (verdict not skipped) whose capture is "+
			"verified by traffic; 1 when the node has no such pod (nothing uncovered).", nil, nil)
	findingsDesc = prometheus.NewDesc("meshdoctor_findings",
		"Pods, or node conditions, currently showing each finding code, by code and severity.",
		[]string{"code", "severity"}, nil)
	sweepDesc = prometheus.NewDesc("meshdoctor_last_sweep_timestamp_seconds",
		"When the last whole-node sweep ended (Unix time); 0 before the first.", nil, nil)
	podVerdictDesc = prometheus.NewDesc("meshdoctor_pod_verdict",
		"1 for each pod's current verdict (opt-in, one series per pod).", []string{"namespace", "pod", "verdict"}, nil)
)

// stateCollector computes the gauges from the agent's state at scrape time.
type stateCollector struct {
	src    Source
	perPod bool
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- podsDesc
	ch <- coverageDesc
	ch <- findingsDesc
	ch <- sweepDesc
	if c.perPod {
		ch <- podVerdictDesc
	}
}

type codeSev struct {
	code string
	sev  nodecheck.Severity
}

// podClass is one series of meshdoctor_pods.
type podClass struct {
	verdict nodecheck.Verdict
	capture string
	mode    string
}

// classify puts a pod in its series; false for a verdict outside the report's four, which no
// series counts.
func classify(p nodecheck.PodReport) (podClass, bool) {
	if !slices.Contains(verdicts, p.Verdict) {
		return podClass{}, false
	}
	c := podClass{verdict: p.Verdict, capture: captureUnverified, mode: "none"}
	if slices.Contains(modes, p.Capture.Mode) {
		c.mode = p.Capture.Mode
	}
	switch {
	case p.Verdict == nodecheck.VerdictSkipped:
		c.capture = captureNone
	case p.Verdict == nodecheck.VerdictBroken:
		c.capture = captureBroken
	case p.Verdict == nodecheck.VerdictOK && p.Capture.VerifiedBy == nodecheck.VerifiedByTraffic:
		c.capture = captureVerified
	}
	return c, true
}

// zeroPodClasses are the series of meshdoctor_pods that exist at zero, so that a dashboard sees no
// gap whichever label it sums by: each verdict with its natural capture states, in every mode;
// skipped pods, never captured, in mode none only. 17 series, whatever the node runs.
func zeroPodClasses() map[podClass]int {
	out := map[podClass]int{{nodecheck.VerdictSkipped, captureNone, "none"}: 0}
	for _, m := range modes {
		for _, c := range []podClass{
			{nodecheck.VerdictOK, captureVerified, m},
			{nodecheck.VerdictOK, captureUnverified, m},
			{nodecheck.VerdictBroken, captureBroken, m},
			{nodecheck.VerdictUnknown, captureUnverified, m},
		} {
			out[c] = 0
		}
	}
	return out
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	pods := c.src.Pods()
	byClass := zeroPodClasses()
	var meant, verified int
	findings := map[codeSev]int{}
	for _, code := range nodecheck.AllCodes() {
		for _, s := range severities {
			findings[codeSev{string(code), s}] = 0
		}
	}
	count := func(fs []nodecheck.Finding) {
		seen := map[codeSev]bool{}
		for _, f := range fs {
			k := codeSev{string(f.Code), f.Severity}
			if !seen[k] {
				seen[k] = true
				findings[k]++
			}
		}
	}
	for _, p := range pods {
		if k, ok := classify(p.Outcome.Pod); ok {
			byClass[k]++
			if k.verdict != nodecheck.VerdictSkipped {
				meant++
			}
			if k.capture == captureVerified {
				verified++
			}
		}
		count(p.Outcome.Pod.Findings)
		if c.perPod && p.Target.Name != "" {
			ch <- prometheus.MustNewConstMetric(podVerdictDesc, prometheus.GaugeValue, 1,
				p.Target.Namespace, p.Target.Name, string(p.Outcome.Pod.Verdict))
		}
	}
	for _, f := range c.src.Node().Findings {
		findings[codeSev{string(f.Code), f.Severity}]++
	}
	for k, n := range byClass {
		ch <- prometheus.MustNewConstMetric(podsDesc, prometheus.GaugeValue, float64(n), string(k.verdict), k.capture, k.mode)
	}
	// 1, not 0/0 (NaN), on a node without a pod to capture: nothing there is uncovered.
	ratio := 1.0
	if meant > 0 {
		ratio = float64(verified) / float64(meant)
	}
	ch <- prometheus.MustNewConstMetric(coverageDesc, prometheus.GaugeValue, ratio)
	for k, n := range findings {
		ch <- prometheus.MustNewConstMetric(findingsDesc, prometheus.GaugeValue, float64(n), k.code, string(k.sev))
	}
	var ts float64
	if t := c.src.LastSweep(); !t.IsZero() {
		ts = float64(t.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(sweepDesc, prometheus.GaugeValue, ts)
}
