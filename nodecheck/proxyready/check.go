// Package proxyready diagnoses app containers that start before their istio-proxy is ready.
//
// That is problem 3 of Istio's traffic-management troubleshooting guide, "connection refused
// right after pod start": the app container started before istio-proxy was listening. It asks
// the proxy itself, from inside the pod's network namespace, whether it is ready (GET
// localhost:15020/healthz/ready, what the guide tells an app to poll) and reports ProxyNotReady
// with pilot-agent's reason; and it compares the start of each app container with the proxy's
// readiness (AppStartedBeforeProxy), says whether a native sidecar or
// holdApplicationUntilProxyStarts protects the pod, and cites refused connections from the app's
// own log.
//
// # Readers
//
// Its readers of the node are the probe (a socket opened inside the pod's namespace, never a
// process), the container facts discovery handed over, and kubelet's container log files, read
// with the log engine's bounded search (nodecheck/logscan). Node conditions found by the log
// engine come in through NodeConditions, so a proxy that gets no configuration can be linked with
// istiod losing the API server.
package proxyready

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/logscan"
)

// Defaults of Config.
const (
	// DefaultGrace: a pod younger than this whose proxy is not ready is still starting (info).
	// Envoy is ready within seconds when istiod answers.
	DefaultGrace = 10 * time.Second
	// DefaultDeadline: a pod older than this whose proxy is not ready never got ready (error);
	// in between, a warning.
	DefaultDeadline = time.Minute
	// DefaultAppLogWindow is how long after an app container started its log is searched for
	// refused connections: "its first seconds".
	DefaultAppLogWindow = 30 * time.Second
)

// Log lines the check looks for. pilot-agent's status server logs every failed readiness probe
// with its reason, and the first success after failures (pilot/cmd/pilot-agent/status's
// handleReadyProbe); its HTTP answer carries only the status code, so the reason is in the log.
const (
	patternNotReady = `Envoy proxy is NOT ready: `
	patternReady    = `Envoy proxy is ready$`
	// What refused connections look like in an app's log, in the usual runtimes' words: Go's
	// "connect: connection refused", Java's and curl's "Connection refused", Node's ECONNREFUSED.
	patternRefused = `[Cc]onnection refused|ECONNREFUSED`
)

// maxAppLogLines bounds the refused lines cited per app container.
const maxAppLogLines = 3

// NodeConditions says whether a node-level condition holds now. The log engine's scanner is one
// (logscan.Scanner.Active); a check links its pod finding to the condition it names.
type NodeConditions interface {
	Active(code nodecheck.Code) (nodecheck.Finding, bool)
}

// Config is what the check is handed.
type Config struct {
	// Prober asks the proxy from inside the pod (NetnsProber).
	Prober Prober
	// PodLogDir is kubelet's container log directory (/var/log/pods under the host root); empty
	// means no log evidence.
	PodLogDir string
	// Conditions, when set, links a not-ready proxy with IstiodAPIServerUnreachable.
	Conditions NodeConditions
	// Grace and Deadline grade ProxyNotReady by the pod's age (DefaultGrace, DefaultDeadline).
	Grace, Deadline time.Duration
	// HoldByDefault is the mesh's holdApplicationUntilProxyStarts default
	// (meshConfig.defaultConfig), which the node cannot read without the API server.
	HoldByDefault bool
	// AppLogWindow is DefaultAppLogWindow when zero.
	AppLogWindow time.Duration
	Now          func() time.Time
}

// Check is the proxy readiness and start order check.
type Check struct {
	cfg                         Config
	notReadyQ, readyQ, refusedQ *logscan.LogQuery
}

// New checks the configuration and returns the check.
func New(cfg Config) (*Check, error) {
	if cfg.Prober == nil {
		return nil, errors.New("proxyready: no prober")
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = DefaultDeadline
	}
	if cfg.Deadline < cfg.Grace {
		return nil, fmt.Errorf("proxyready: deadline %s shorter than the grace period %s", cfg.Deadline, cfg.Grace)
	}
	if cfg.AppLogWindow <= 0 {
		cfg.AppLogWindow = DefaultAppLogWindow
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Check{cfg: cfg}
	for _, q := range []struct {
		dst     **logscan.LogQuery
		pattern string
	}{{&c.notReadyQ, patternNotReady}, {&c.readyQ, patternReady}, {&c.refusedQ, patternRefused}} {
		var err error
		if *q.dst, err = logscan.NewLogQuery(q.pattern); err != nil {
			return nil, fmt.Errorf("proxyready: %w", err)
		}
	}
	return c, nil
}

// Name is the check's name in metrics and reports.
func (c *Check) Name() string { return "proxy-ready" }

// Detail is what the check hands the debug endpoint.
type Detail struct {
	// Skipped says why nothing was probed.
	Skipped string `json:"skipped,omitempty"`
	Probe   *Probe `json:"probe,omitempty"`
	// Note says why a probe result gave no finding.
	Note       string         `json:"note,omitempty"`
	Protection *PodProtection `json:"protection,omitempty"`
	// ProxyReadyAt is when pilot-agent first logged the proxy ready in this run of istio-proxy.
	ProxyReadyAt time.Time `json:"proxyReadyAt,omitzero"`
	// LogErrors are container logs that could not be read (the findings then lack their evidence).
	LogErrors []string `json:"logErrors,omitempty"`
}

// Check probes the target's proxy and compares its readiness with its app containers' start.
func (c *Check) Check(ctx context.Context, t nodecheck.Target) (nodecheck.Result, error) {
	d := &Detail{}
	res := nodecheck.Result{Detail: d}
	if d.Skipped = skipReason(t); d.Skipped != "" {
		return res, nil
	}
	port, err := statusPort(t.Annotations)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading the status port of %s: %w", t.ID(), err)
	}
	if port == 0 {
		d.Skipped = "pilot-agent's status server is disabled (" + istiopod.AnnotationStatusPort + ": 0): nothing to probe"
		return res, nil
	}
	probe, err := c.cfg.Prober.Probe(ctx, t.Netns, port)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("probing the proxy of %s: %w", t.ID(), err)
	}
	d.Probe = &probe
	v := &podView{c: c, t: t, port: port, probe: probe, now: c.cfg.Now(), proxy: t.Container(istiopod.ContainerIstioProxy), detail: d}
	v.age, v.ageKnown = podAge(t, v.now)
	if f, ok := v.proxyNotReady(ctx); ok {
		res.Findings = append(res.Findings, f)
	}
	if v.proxy != nil {
		// Start order needs the pod's containers; a bare namespace has none to compare.
		prot := protectionOf(t.Annotations, c.cfg.HoldByDefault)
		d.Protection = &prot
		if f, ok := v.startOrder(ctx, prot); ok {
			res.Findings = append(res.Findings, f)
		}
	}
	return res, nil
}

// skipReason says why a target has no proxy to ask.
func skipReason(t nodecheck.Target) string {
	switch {
	case t.Netns == "":
		return "no network namespace to probe in"
	case len(t.Containers) > 0 && t.Container(istiopod.ContainerIstioProxy) == nil:
		return "the pod has no istio-proxy container"
	case len(t.Containers) == 0 && t.Annotations[istiopod.AnnotationAmbientRedirection] == "enabled" &&
		t.Annotations[istiopod.AnnotationSidecarStatus] == "":
		return "ambient mode: the pod has no sidecar proxy"
	}
	return ""
}

// statusPort is pilot-agent's status port for the pod: status.sidecar.istio.io/port, else 15020.
func statusPort(a map[string]string) (uint16, error) {
	v, ok := a[istiopod.AnnotationStatusPort]
	if !ok || strings.TrimSpace(v) == "" {
		return DefaultStatusPort, nil
	}
	p, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("annotation %s: %q is not a port", istiopod.AnnotationStatusPort, v)
	}
	return uint16(p), nil
}

// podAge is how long ago the pod's first container was created: the init containers run first
// and are kept, so it stands for the pod's start on the node.
func podAge(t nodecheck.Target, now time.Time) (time.Duration, bool) {
	var first time.Time
	for _, c := range t.Containers {
		for _, at := range []time.Time{c.CreatedAt, c.StartedAt} {
			if !at.IsZero() && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
	}
	if first.IsZero() {
		return 0, false
	}
	return max(now.Sub(first), 0), true
}

// podView is one target under examination, with the proxy log lookups made at most once.
type podView struct {
	c        *Check
	t        nodecheck.Target
	port     uint16
	probe    Probe
	now      time.Time
	proxy    *nodecheck.Container
	age      time.Duration
	ageKnown bool
	detail   *Detail

	readyLooked bool
	ready       *logscan.Sample // pilot-agent's first "Envoy proxy is ready" in this run of istio-proxy
}

// search runs a query on the log of the container's current run (kubelet writes one file per
// run, so nothing in it predates the run: the runtime records a start time a moment after the
// process may have written its first lines); a log that cannot be read is noted in the detail
// and gives nothing.
func (v *podView) search(ctx context.Context, q *logscan.LogQuery, c *nodecheck.Container, w logscan.Window) []logscan.Sample {
	if v.c.cfg.PodLogDir == "" || v.t.Name == "" || c == nil {
		return nil
	}
	ref := logscan.ContainerLog{Dir: v.c.cfg.PodLogDir, Namespace: v.t.Namespace, Pod: v.t.Name, UID: v.t.UID,
		Container: c.Name, Attempt: c.Attempt}
	found, err := q.Search(ctx, ref, w)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		v.detail.LogErrors = append(v.detail.LogErrors, err.Error())
	}
	return found
}

// proxyReadyLine returns pilot-agent's first "Envoy proxy is ready" in this run of istio-proxy.
func (v *podView) proxyReadyLine(ctx context.Context) *logscan.Sample {
	if !v.readyLooked {
		v.readyLooked = true
		if v.proxy != nil && !v.proxy.StartedAt.IsZero() {
			if s := v.search(ctx, v.c.readyQ, v.proxy, logscan.Window{}); len(s) > 0 {
				v.ready = &s[0]
				v.detail.ProxyReadyAt = s[0].Time
			}
		}
	}
	return v.ready
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ago renders an age for messages: whole seconds, or milliseconds under a second.
func ago(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// proxyNotReady reports a proxy that does not answer 200, graded by the pod's age.
func (v *podView) proxyNotReady(ctx context.Context) (nodecheck.Finding, bool) {
	p := v.probe
	if p.Outcome == OutcomeReady {
		return nodecheck.Finding{}, false
	}
	if v.proxy == nil && p.Outcome != OutcomeNotReady {
		// A bare namespace (--netns) says nothing of its containers: a proxy that never started
		// cannot be told from a namespace without one, so only an answer is worth a finding.
		v.detail.Note = fmt.Sprintf("nothing answers on localhost:%d (%s) and the target carries no container "+
			"information: no proxy can be expected to answer", v.port, p.Outcome)
		return nodecheck.Finding{}, false
	}
	ev := map[string]any{
		"probe":      probeEvidence(p),
		"statusPort": v.port,
	}
	var what string
	switch p.Outcome {
	case OutcomeNotReady:
		what = fmt.Sprintf("%s answered %d %s", p.URL, p.Status, http.StatusText(p.Status))
	case OutcomeRefused:
		what = fmt.Sprintf("nothing listens on localhost:%d in the pod's network namespace (connection refused)", v.port)
	case OutcomeTimeout:
		what = fmt.Sprintf("%s did not answer in time", p.URL)
	default:
		what = fmt.Sprintf("%s failed: %s", p.URL, p.Error)
	}
	parts := []string{"istio-proxy is not ready: " + what}

	reason, reasonSource := "", ""
	if p.Body != "" {
		reason, reasonSource = p.Body, "response body"
	} else if p.Outcome == OutcomeNotReady && v.proxy != nil && !v.proxy.StartedAt.IsZero() {
		if s := v.search(ctx, v.c.notReadyQ, v.proxy, logscan.Window{Last: true}); len(s) > 0 {
			if _, r, ok := strings.Cut(s[0].Line, patternNotReady); ok {
				reason, reasonSource = strings.TrimSpace(r), "istio-proxy log"
				ev["proxyLog"] = s[0]
			}
		}
	}
	if reason != "" {
		parts[0] += fmt.Sprintf(": pilot-agent says %q", reason)
		ev["reason"], ev["reasonSource"] = reason, reasonSource
	}

	if v.proxy != nil {
		ev["container"] = containerEvidence(*v.proxy)
		if s := stateSentence(*v.proxy); s != "" {
			parts = append(parts, s)
		}
		if v.proxy.State == nodecheck.ContainerRunning && !v.proxy.StartedAt.IsZero() {
			if r := v.proxyReadyLine(ctx); r != nil {
				parts = append(parts, "it was ready at "+stamp(r.Time)+" and is not any more")
				ev["readyLog"] = *r
			} else if v.c.cfg.PodLogDir != "" && v.t.Name != "" {
				parts = append(parts, "pilot-agent has not logged it ready since istio-proxy started at "+stamp(v.proxy.StartedAt))
			}
		}
	}

	sev := nodecheck.SeverityWarning
	switch {
	case !v.ageKnown:
		parts = append(parts, "the pod's age is unknown")
	case v.age < v.c.cfg.Grace:
		sev = nodecheck.SeverityInfo
		parts = append(parts, fmt.Sprintf("the pod started %s ago: the proxy may still be starting", ago(v.age)))
	case v.age < v.c.cfg.Deadline:
		parts = append(parts, fmt.Sprintf("the pod started %s ago", ago(v.age)))
	default:
		sev = nodecheck.SeverityError
		parts = append(parts, fmt.Sprintf("the pod started %s ago and its proxy is still not ready", ago(v.age)))
	}
	if v.ageKnown {
		ev["podAge"] = ago(v.age)
	}

	remedy := notReadyRemedy(p, reason, v.proxy)
	if p.Outcome == OutcomeNotReady && v.c.cfg.Conditions != nil {
		if related, ok := v.c.cfg.Conditions.Active(nodecheck.IstiodAPIServerUnreachable); ok {
			parts = append(parts, "meanwhile istiod on this node cannot reach the Kubernetes API server ("+
				string(nodecheck.IstiodAPIServerUnreachable)+"): it may not be pushing configuration")
			ev["related"] = map[string]any{"code": related.Code, "severity": related.Severity, "message": related.Message}
			remedy += " istiod on this node is losing the API server (see the node finding " +
				string(nodecheck.IstiodAPIServerUnreachable) + "); proxies get their configuration once it recovers."
		}
	}
	return nodecheck.Finding{
		Code:     nodecheck.ProxyNotReady,
		Severity: sev,
		Message:  strings.Join(parts, "; "),
		Remedy:   remedy,
		Evidence: ev,
	}, true
}

func probeEvidence(p Probe) map[string]any {
	ev := map[string]any{"url": p.URL, "outcome": p.Outcome}
	if p.Status != 0 {
		ev["status"] = p.Status
	}
	if p.Body != "" {
		ev["body"] = p.Body
	}
	if p.Error != "" {
		ev["error"] = p.Error
	}
	return ev
}

func containerEvidence(c nodecheck.Container) map[string]any {
	ev := map[string]any{"name": c.Name, "state": c.State, "attempt": c.Attempt}
	if !c.StartedAt.IsZero() {
		ev["startedAt"] = c.StartedAt
	}
	if c.State == nodecheck.ContainerExited {
		ev["exitCode"] = c.ExitCode
		if c.Reason != "" {
			ev["reason"] = c.Reason
		}
		if !c.FinishedAt.IsZero() {
			ev["finishedAt"] = c.FinishedAt
		}
	}
	return ev
}

// stateSentence says what is unusual about the proxy container's state.
func stateSentence(c nodecheck.Container) string {
	var s string
	switch c.State {
	case nodecheck.ContainerRunning:
	case nodecheck.ContainerExited:
		s = fmt.Sprintf("istio-proxy exited with code %d", c.ExitCode)
		if c.Reason != "" {
			s += " (" + c.Reason + ")"
		}
		if !c.FinishedAt.IsZero() {
			s += " at " + stamp(c.FinishedAt)
		}
	case nodecheck.ContainerCreated:
		s = "istio-proxy was created but has not started"
	default:
		s = "istio-proxy's state is unknown to the runtime"
	}
	if c.Attempt > 0 {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("istio-proxy restarted %d time(s)", c.Attempt)
	}
	return s
}

func notReadyRemedy(p Probe, reason string, proxy *nodecheck.Container) string {
	switch {
	case strings.Contains(reason, "config not received from XDS server"), strings.Contains(reason, "config not fully received"):
		return "Envoy has not received its configuration from istiod. Check that istiod runs and is ready " +
			"(kubectl -n istio-system get pods -l app=istiod), that the pod reaches it on port 15012 (discoveryAddress), " +
			"and read the proxy's log (kubectl logs POD -c istio-proxy) for XDS and certificate errors."
	case strings.Contains(reason, "rejected"):
		return "Envoy rejected the configuration istiod sent. The proxy's log (kubectl logs POD -c istio-proxy) names " +
			"the rejected resource; `istioctl analyze` and the recent changes to VirtualServices, DestinationRules, " +
			"EnvoyFilters and Sidecars usually show the culprit."
	case strings.Contains(reason, "DNS"):
		return "Istio's DNS proxy has not received its name table from istiod yet. Check istiod and the proxy's " +
			"connection to it (kubectl logs POD -c istio-proxy)."
	case p.Outcome == OutcomeRefused && proxy != nil && proxy.State != nodecheck.ContainerRunning:
		return "istio-proxy is not running. Read why (kubectl describe pod POD; kubectl logs POD -c istio-proxy --previous): " +
			"a crash at start, a missing or wrong image, failing certificates, or resource limits."
	case p.Outcome == OutcomeRefused:
		return "pilot-agent opens its status port first thing at start: nothing listening means istio-proxy is not running " +
			"the agent, or runs it with another status port than the pod's status.sidecar.istio.io/port annotation. " +
			"Read the proxy's log (kubectl logs POD -c istio-proxy)."
	}
	return "Read the proxy's log (kubectl logs POD -c istio-proxy): pilot-agent logs the reason of every failed " +
		"readiness check as \"Envoy proxy is NOT ready: …\". Check that istiod runs and is reachable from the pod."
}
