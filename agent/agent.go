// Package agent is meshdoctor's long-running node process: it decides when each pod is checked
// (runtime and API triggers with debounce, a periodic re-verification with jitter, per-pod backoff
// after a check that could not run, a whole-node sweep that never overlaps itself), runs the checks
// on a bounded worker pool, keeps the node's current state, and hands every change to its reporters
// (metrics, pod annotations and events, the debug endpoint), which live in the sub-packages.
package agent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
)

// Discoverer lists the pods of the node (nodecheck/discover's runtimes, or fixed netns targets).
type Discoverer interface {
	Discover(ctx context.Context) ([]nodecheck.Target, error)
}

// Observer is a reporter. The agent calls it from one goroutine at a time, after every change, with
// what changed; it must not block for long (API writes belong in the observer's own goroutine).
type Observer interface {
	// PodChecked is called after every check of a pod, with the pod's state before (nil when the
	// pod is new) and after.
	PodChecked(prev *PodState, cur PodState)
	// PodGone is called when a pod has left the node.
	PodGone(last PodState)
	// NodeChecked is called after every pass of the node checks.
	NodeChecked(prev, cur NodeState)
}

// PodState is what the agent knows of one pod now.
type PodState struct {
	Target  nodecheck.Target
	Outcome diagnose.Outcome
	// Since is when the pod's verdict or codes last changed.
	Since time.Time
	// Checked is when the last check ended; Why is what caused it.
	Checked time.Time
	Why     string
	// Failures counts checks in a row that could not run (verdict unknown from an error).
	Failures int
}

// Key names the pod: "namespace/name", or the netns path of a bare netns target.
func (p PodState) Key() string { return p.Target.ID() }

// Codes returns the pod's finding codes, sorted and without repeats.
func (p PodState) Codes() []string { return Codes(p.Outcome.Pod.Findings) }

// Codes returns the codes of findings, sorted and without repeats.
func Codes(fs []nodecheck.Finding) []string {
	out := make([]string, 0, len(fs))
	for _, f := range fs {
		out = append(out, string(f.Code))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// NodeState is the node-level part: the node checks' findings and details.
type NodeState struct {
	Findings []nodecheck.Finding
	Runs     []nodecheck.CheckRun
	Details  map[string]any
	Checked  time.Time
}

// Config is what the agent needs. Zero durations take the defaults.
type Config struct {
	Node    string
	Runtime Discoverer
	Runner  *diagnose.Runner
	// NodeChecks run every NodeInterval (log evidence, istio-cni's install).
	NodeChecks   []nodecheck.NodeCheck
	NodeInterval time.Duration
	// RecheckInterval: every pod is re-verified at least this often; each pod's next check is
	// drawn uniformly from [1-Jitter, 1] × RecheckInterval after its last, so 110 pods do not all
	// enter their namespaces at the same second.
	RecheckInterval time.Duration
	Jitter          float64
	// Debounce gathers triggers that arrive together (a pod's sandbox start, its init containers'
	// exits, its informer updates) into one discovery and one check.
	Debounce time.Duration
	// Workers bounds how many pods are checked at once.
	Workers int
	// BackoffBase and BackoffMax bound the retry of a pod whose check could not run.
	BackoffBase, BackoffMax time.Duration
	Observers               []Observer
	Log                     *slog.Logger
	// OnCheckRun sees every check run (metrics: checks_total, check_duration_seconds).
	OnCheckRun func(nodecheck.CheckRun)
}

// Defaults.
const (
	DefaultRecheckInterval = 5 * time.Minute
	DefaultJitter          = 0.2
	DefaultDebounce        = time.Second
	DefaultWorkers         = 2
	DefaultNodeInterval    = 30 * time.Second
	DefaultBackoffBase     = 5 * time.Second
	DefaultBackoffMax      = 5 * time.Minute
)

// Agent schedules checks and keeps the node's state. Create it with New; run it with Run.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	trig chan trigger
	// nodeNow asks the node loop for a pass before its interval (a CNI config change).
	nodeNow chan string

	mu        sync.Mutex
	observers []Observer
	pods      map[string]*PodState
	node      NodeState
	ready     bool
	sweeps    int
	lastSweep time.Time
}

// trigger asks for a check: of one pod (Key or UID or SandboxID), or of the whole node (all).
type trigger struct {
	all               bool
	key, uid, id, why string
	// within, when set, shortens the debounce for this trigger: a change seen in the pod's own
	// rules needs no gathering with runtime events.
	within time.Duration
}

// New checks the configuration and returns an agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Runtime == nil {
		return nil, errors.New("agent: no runtime to discover pods with")
	}
	if cfg.Runner == nil {
		return nil, errors.New("agent: no checks")
	}
	if cfg.RecheckInterval <= 0 {
		cfg.RecheckInterval = DefaultRecheckInterval
	}
	if cfg.Jitter <= 0 || cfg.Jitter >= 1 {
		cfg.Jitter = DefaultJitter
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.NodeInterval <= 0 {
		cfg.NodeInterval = DefaultNodeInterval
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = DefaultBackoffBase
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, log: cfg.Log, trig: make(chan trigger, 256), nodeNow: make(chan string, 1), pods: map[string]*PodState{},
		observers: slices.Clone(cfg.Observers)}, nil
}

// Observe adds a reporter, for one that needs the agent to be built (its triggers): from the
// next change on, it sees every change the others see.
func (a *Agent) Observe(o Observer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.observers = append(a.observers, o)
}

// TriggerPod asks for a check of the pod with that "namespace/name", UID, or sandbox or container
// id (any may be empty) soon, after the debounce. It never blocks: when the queue is full the
// trigger becomes a sweep of the node.
func (a *Agent) TriggerPod(key, uid, id, why string) {
	a.send(trigger{key: key, uid: uid, id: id, why: why})
}

// TriggerPodWithin asks for a check of the pod key within d (less than Debounce): for a change
// seen in the pod's rules themselves.
func (a *Agent) TriggerPodWithin(key, why string, d time.Duration) {
	a.send(trigger{key: key, why: why, within: d})
}

// TriggerNode asks for a whole-node pass soon (a runtime event that names no known pod).
func (a *Agent) TriggerNode(why string) { a.send(trigger{all: true, why: why}) }

// CheckNodeNow asks for a pass of the node checks without waiting for NodeInterval; asks that
// come while one is pending are folded into it.
func (a *Agent) CheckNodeNow(why string) {
	select {
	case a.nodeNow <- why:
	default:
	}
}

func (a *Agent) send(t trigger) {
	select {
	case a.trig <- t:
	default:
		select {
		case a.trig <- trigger{all: true, why: "trigger queue full"}:
		default:
		}
	}
}

// Ready reports whether the first sweep has completed: /readyz.
func (a *Agent) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ready
}

// Report returns the node's report in the form of `check -o json`, pods sorted by key.
func (a *Agent) Report() *nodecheck.Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	rep := &nodecheck.Report{Node: a.cfg.Node, Pods: []nodecheck.PodReport{}, Findings: []nodecheck.Finding{}}
	for _, p := range a.sortedLocked() {
		rep.Pods = append(rep.Pods, p.Outcome.Pod)
	}
	rep.Findings = append(rep.Findings, a.node.Findings...)
	return rep
}

// Pods returns a copy of every pod's state, sorted by key.
func (a *Agent) Pods() []PodState {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []PodState
	for _, p := range a.sortedLocked() {
		out = append(out, *p)
	}
	return out
}

// Pod returns one pod's state by "namespace/name".
func (a *Agent) Pod(key string) (PodState, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pods[key]
	if !ok {
		return PodState{}, false
	}
	return *p, true
}

// Node returns the node-level state.
func (a *Agent) Node() NodeState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.node
}

// LastSweep is when the last whole-node sweep ended (zero before the first).
func (a *Agent) LastSweep() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastSweep
}

// Name is the node's name.
func (a *Agent) Name() string { return a.cfg.Node }

func (a *Agent) sortedLocked() []*PodState {
	out := make([]*PodState, 0, len(a.pods))
	for _, p := range a.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Run schedules checks until ctx ends, then waits for the checks under way to finish (they see
// the cancelled context and return quickly).
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.nodeLoop(ctx)
	}()
	err := a.podLoop(ctx)
	wg.Wait()
	return err
}

// nodeLoop runs the node checks now and every NodeInterval; log matches are reported by the log
// scanner itself as they are found, so the interval only bounds how stale the conditions are.
func (a *Agent) nodeLoop(ctx context.Context) {
	if len(a.cfg.NodeChecks) == 0 {
		return
	}
	t := time.NewTicker(a.cfg.NodeInterval)
	defer t.Stop()
	for {
		a.checkNode(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case why := <-a.nodeNow:
			a.log.Debug("node checks run early", "why", why)
		}
	}
}

func (a *Agent) checkNode(ctx context.Context) {
	out := (&diagnose.NodeRunner{Checks: a.cfg.NodeChecks, Log: a.log}).Run(ctx)
	if ctx.Err() != nil {
		return // stopping: a pass cut short is not the node's state
	}
	if a.cfg.OnCheckRun != nil {
		for _, run := range out.Runs {
			a.cfg.OnCheckRun(run)
		}
	}
	cur := NodeState{Findings: out.Findings, Runs: out.Runs, Details: out.Details, Checked: time.Now()}
	a.mu.Lock()
	prev := a.node
	a.node = cur
	for _, o := range a.observers {
		o.NodeChecked(prev, cur)
	}
	a.mu.Unlock()
	if !slices.Equal(Codes(prev.Findings), Codes(cur.Findings)) {
		a.log.Info("node findings changed", "codes", Codes(cur.Findings), "was", Codes(prev.Findings))
	}
}
