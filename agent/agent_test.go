package agent

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
)

type fakeRuntime struct {
	mu      sync.Mutex
	targets []nodecheck.Target
	calls   int
}

func (f *fakeRuntime) Discover(context.Context) ([]nodecheck.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return append([]nodecheck.Target(nil), f.targets...), nil
}

// countingCheck counts checks per pod, fails for the pods in failing, finds a problem in broken.
type countingCheck struct {
	mu      sync.Mutex
	n       map[string]int
	failing map[string]bool
	broken  map[string]bool
}

func (c *countingCheck) Name() string { return "counting" }

func (c *countingCheck) Check(_ context.Context, t nodecheck.Target) (nodecheck.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[t.ID()]++
	if c.failing[t.ID()] {
		return nodecheck.Result{}, errors.New("cannot read")
	}
	if c.broken[t.ID()] {
		return nodecheck.Result{Findings: []nodecheck.Finding{{Code: nodecheck.RedirectRulesMissing, Severity: nodecheck.SeverityError}}}, nil
	}
	return nodecheck.Result{}, nil
}

func (c *countingCheck) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

func pod(name string) nodecheck.Target {
	return nodecheck.Target{Namespace: "ns", Name: name, UID: "uid-" + name, SandboxID: "sb-" + name, Netns: "/x/" + name}
}

func TestScheduling(t *testing.T) {
	rt := &fakeRuntime{targets: []nodecheck.Target{pod("a"), pod("b"), pod("c")}}
	c := &countingCheck{n: map[string]int{}, failing: map[string]bool{"ns/c": true}, broken: map[string]bool{"ns/b": true}}
	a, err := New(Config{Node: "n", Runtime: rt, Runner: &diagnose.Runner{Checks: []nodecheck.Check{c}},
		RecheckInterval: 300 * time.Millisecond, Debounce: 20 * time.Millisecond,
		BackoffBase: 200 * time.Millisecond, BackoffMax: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	time.Sleep(1100 * time.Millisecond) // about four periods

	// Re-verified periodically: ~3-4 checks in 1.1 s at 300 ms (240-300 ms with jitter).
	if n := c.count("ns/a"); n < 3 || n > 6 {
		t.Errorf("pod a checked %d times in 1.1s at a 300ms period", n)
	}
	// The pod whose check fails is retried with backoff capped at the period: never more often
	// than the others, whatever triggers it.
	for range 10 {
		a.TriggerPod("ns/c", "", "", "hammer")
		time.Sleep(20 * time.Millisecond)
	}
	if n, na := c.count("ns/c"), c.count("ns/a"); n > na+1 {
		t.Errorf("failing pod checked %d times, a healthy one %d: triggers bypassed the backoff", n, na)
	}
	if p, _ := a.Pod("ns/b"); p.Outcome.Pod.Verdict != nodecheck.VerdictBroken {
		t.Errorf("pod b verdict %s, want broken", p.Outcome.Pod.Verdict)
	}
	if !a.Ready() {
		t.Error("not ready after the first sweep")
	}

	// A trigger by container/sandbox id checks that pod after the debounce, not the others.
	before, beforeB := c.count("ns/a"), c.count("ns/b")
	a.TriggerPod("", "", "sb-a", "test trigger")
	time.Sleep(80 * time.Millisecond)
	if c.count("ns/a") < before+1 {
		t.Errorf("trigger: pod a checked %d→%d times", before, c.count("ns/a"))
	}
	if c.count("ns/b") > beforeB+1 {
		t.Errorf("trigger of a checked b too")
	}

	// A pod gone from the runtime leaves the state.
	rt.mu.Lock()
	rt.targets = rt.targets[:2]
	rt.mu.Unlock()
	a.TriggerNode("test sweep")
	time.Sleep(100 * time.Millisecond)
	if _, ok := a.Pod("ns/c"); ok {
		t.Error("pod c still in the state after it left the node")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if got := len(a.Report().Pods); got != 2 {
		t.Errorf("%d pods in the report, want 2", got)
	}
}

// stoppingCheck finds every pod broken and, while checking the pods in change, changes them in
// the runtime as the check runs: what a pod being stopped looks like to a check that started
// before its sandbox was.
type stoppingCheck struct {
	rt     *fakeRuntime
	mu     sync.Mutex
	change map[string]func(*nodecheck.Target) bool // false removes the pod
}

func (c *stoppingCheck) stopChanging(ids ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		delete(c.change, id)
	}
}

func (c *stoppingCheck) Name() string { return "stopping" }

func (c *stoppingCheck) Check(_ context.Context, t nodecheck.Target) (nodecheck.Result, error) {
	c.mu.Lock()
	f := c.change[t.ID()]
	c.mu.Unlock()
	if f != nil {
		c.rt.mu.Lock()
		var kept []nodecheck.Target
		for _, x := range c.rt.targets {
			if x.ID() != t.ID() || f(&x) {
				kept = append(kept, x)
			}
		}
		c.rt.targets = kept
		c.rt.mu.Unlock()
	}
	return nodecheck.Result{Findings: []nodecheck.Finding{{Code: nodecheck.ProxyNotReady, Severity: nodecheck.SeverityError}}}, nil
}

// TestBrokenWhileStoppingIsNotKept: a broken verdict is kept only when the runtime still lists
// the pod as the check was given it; a pod that left the node, was recreated or whose containers
// changed during its check keeps no verdict from that check.
func TestBrokenWhileStoppingIsNotKept(t *testing.T) {
	withProxy := func(name string) nodecheck.Target {
		p := pod(name)
		p.Containers = []nodecheck.Container{{Name: "istio-proxy", ID: "c-" + name, State: nodecheck.ContainerRunning}}
		return p
	}
	rt := &fakeRuntime{targets: []nodecheck.Target{withProxy("steady"), withProxy("leaving"), withProxy("exiting"), withProxy("recreated")}}
	c := &stoppingCheck{rt: rt, change: map[string]func(*nodecheck.Target) bool{
		"ns/leaving": func(*nodecheck.Target) bool { return false },
		"ns/exiting": func(p *nodecheck.Target) bool {
			p.Containers = []nodecheck.Container{{Name: "istio-proxy", ID: "c-exiting", State: nodecheck.ContainerExited, ExitCode: 137}}
			return true
		},
		"ns/recreated": func(p *nodecheck.Target) bool { p.UID = "uid-other"; return true },
	}}
	a, err := New(Config{Node: "n", Runtime: rt, Runner: &diagnose.Runner{Checks: []nodecheck.Check{c}},
		RecheckInterval: time.Hour, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !a.Ready() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !a.Ready() {
		t.Fatal("no sweep within 5 s")
	}
	if p, ok := a.Pod("ns/steady"); !ok || p.Outcome.Pod.Verdict != nodecheck.VerdictBroken {
		t.Errorf("pod steady: %v %+v, want broken (nothing changed during its check)", ok, p.Outcome.Pod)
	}
	for _, name := range []string{"ns/leaving", "ns/exiting", "ns/recreated"} {
		if p, ok := a.Pod(name); ok && p.Outcome.Pod.Verdict == nodecheck.VerdictBroken {
			t.Errorf("pod %s: broken verdict kept from a check during which it changed", name)
		}
	}
	// The changed pods are checked again soon (the runtime's events would ask too), and then,
	// unchanged, their verdict stands.
	c.stopChanging("ns/exiting", "ns/recreated")
	for time.Now().Before(deadline) {
		e, _ := a.Pod("ns/exiting")
		r, _ := a.Pod("ns/recreated")
		if e.Outcome.Pod.Verdict == nodecheck.VerdictBroken && r.Outcome.Pod.Verdict == nodecheck.VerdictBroken {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, name := range []string{"ns/exiting", "ns/recreated"} {
		if p, _ := a.Pod(name); p.Outcome.Pod.Verdict != nodecheck.VerdictBroken {
			t.Errorf("pod %s: verdict %q once it stopped changing, want broken", name, p.Outcome.Pod.Verdict)
		}
	}
	if _, ok := a.Pod("ns/leaving"); ok {
		t.Error("pod leaving still in the state after it left the node")
	}
	cancel()
	<-done
}
