package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
)

// podLoop is the scheduler: one goroutine owns the due times, the pending triggers and the
// backoff, and runs one pass at a time (so the whole-node sweep never overlaps itself, nor a
// triggered pass), each pass checking its pods on the bounded worker pool.
func (a *Agent) podLoop(ctx context.Context) error {
	s := &scheduler{
		next:    map[string]time.Time{},
		pending: map[string]string{},
		rng:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	s.all, s.allWhy = true, "startup"
	s.deadline = time.Now()
	discBackoff := time.Duration(0)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wake := s.wakeAt(a.cfg.RecheckInterval)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return nil
		case t := <-a.trig:
			s.add(t, a.cfg.Debounce)
			continue
		case <-timer.C:
		}
		now := time.Now()
		var p pass
		switch {
		case s.all && !now.Before(s.deadline):
			p = pass{all: true, why: s.allWhy}
			s.all, s.allWhy = false, ""
			clear(s.pending)
		case len(s.pending) > 0 && !now.Before(s.deadline):
			p = pass{wanted: s.pending, why: "trigger"}
			s.pending = map[string]string{}
		default:
			p = pass{wanted: s.due(now, a.cfg.RecheckInterval), why: "periodic re-verify"}
			if len(p.wanted) == 0 {
				continue
			}
		}
		if err := a.runPass(ctx, s, p); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			discBackoff = min(max(2*discBackoff, a.cfg.BackoffBase), a.cfg.BackoffMax)
			a.log.Warn("cannot list the node's pods; retrying", "err", err, "in", discBackoff.String())
			s.all, s.allWhy = true, "retry after discovery failed"
			s.deadline = time.Now().Add(discBackoff)
			continue
		}
		discBackoff = 0
	}
}

// scheduler is the pod loop's own state (touched by that goroutine only).
type scheduler struct {
	// next is each pod's next periodic check (or retry after backoff).
	next map[string]time.Time
	// pending are triggered pods: selector ("key:", "uid:", "id:" prefix; id is a sandbox or
	// container id) → why.
	pending  map[string]string
	all      bool
	allWhy   string
	deadline time.Time // when the pending triggers' debounce ends
	rng      *rand.Rand
}

type pass struct {
	all    bool
	wanted map[string]string // selector → why
	why    string
}

func (s *scheduler) add(t trigger, debounce time.Duration) {
	if t.within > 0 && t.within < debounce {
		debounce = t.within
	}
	if len(s.pending) == 0 && !s.all {
		s.deadline = time.Now().Add(debounce)
	} else if d := time.Now().Add(debounce); d.Before(s.deadline) {
		s.deadline = d
	}
	if t.all {
		if !s.all {
			s.all, s.allWhy = true, t.why
		}
		return
	}
	for _, sel := range []string{"key:" + t.key, "uid:" + t.uid, "id:" + t.id} {
		if !strings.HasSuffix(sel, ":") {
			s.pending[sel] = t.why
		}
	}
}

func (s *scheduler) wakeAt(interval time.Duration) time.Time {
	if s.all || len(s.pending) > 0 {
		return s.deadline
	}
	wake := time.Now().Add(interval)
	for _, t := range s.next {
		if t.Before(wake) {
			wake = t
		}
	}
	return wake
}

// due returns the pods whose periodic check is due, with the ones due within a tenth of the
// period after now (half the default jitter), so that spread-out pods are checked in batches
// rather than one wake-up each: every pass lists the node's pods once, which at 110 pods cost as
// much as the checks of a batch. A pod is checked at most that much early, never late.
func (s *scheduler) due(now time.Time, interval time.Duration) map[string]string {
	window := interval / 10
	out := map[string]string{}
	for key, t := range s.next {
		if t.Before(now.Add(window)) {
			out["key:"+key] = "periodic re-verify"
		}
	}
	return out
}

// nextCheck draws the next periodic check of a pod from [1-jitter, 1] × interval.
func (s *scheduler) nextCheck(now time.Time, interval time.Duration, jitter float64) time.Time {
	f := 1 - jitter*s.rng.Float64()
	return now.Add(time.Duration(float64(interval) * f))
}

// runPass discovers the node's pods once and checks the ones the pass asks for, plus every pod
// that is new or whose containers changed since its last check (the runtime saw it happen even if
// no trigger said so). Pods gone from the runtime leave the state.
func (a *Agent) runPass(ctx context.Context, s *scheduler, p pass) error {
	start := time.Now()
	targets, err := a.cfg.Runtime.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discovering pods: %w", err)
	}
	now := time.Now()
	type job struct {
		t   nodecheck.Target
		why string
	}
	var jobs []job
	seen := map[string]bool{}
	a.mu.Lock()
	for _, t := range targets {
		key := t.ID()
		if key == "" || seen[key] {
			continue
		}
		seen[key] = true
		prev := a.pods[key]
		why := ""
		switch {
		case p.all:
			why = p.why
		case prev == nil:
			why = "new pod"
		case prev.Target.UID != t.UID:
			why = "pod recreated"
		case !sameRun(prev.Target, t):
			why = "containers changed"
		default:
			why = wantedWhy(p.wanted, t)
		}
		if why == "" {
			continue
		}
		// A pod in backoff after a check that could not run waits for its retry, whatever asks.
		if prev != nil && prev.Failures > 0 && !p.all && why != "pod recreated" && why != "containers changed" {
			if n, ok := s.next[key]; ok && n.After(now) {
				continue
			}
		}
		jobs = append(jobs, job{t: t, why: why})
	}
	var gone []PodState
	for key, ps := range a.pods {
		if !seen[key] {
			gone = append(gone, *ps)
			delete(a.pods, key)
		}
	}
	for key := range s.next {
		if !seen[key] {
			delete(s.next, key) // also a pod that left before its first result was kept
		}
	}
	for _, g := range gone {
		for _, o := range a.observers {
			o.PodGone(g)
		}
	}
	a.mu.Unlock()
	for _, g := range gone {
		a.log.Info("pod left the node", "pod", g.Key())
	}

	// The bounded worker pool: Workers checks at once, each result applied as soon as it is in.
	sem := make(chan struct{}, a.cfg.Workers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, j := range jobs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out := a.cfg.Runner.Run(ctx, []nodecheck.Target{j.t})
			if ctx.Err() != nil || len(out) != 1 {
				return // shutting down: a check cut short says nothing about the pod
			}
			if out[0].Pod.Verdict == nodecheck.VerdictBroken {
				if change := a.changedDuringCheck(ctx, j.t); change != "" {
					// A pod being stopped loses its proxy and then its interface while the
					// runtime still listed it as it was: what the check saw is the stopping,
					// not a broken capture. The runtime's events ask for its next check; this
					// one is due soon in case none does.
					a.log.Info("pod changed while it was checked; its broken verdict is not kept", "pod", j.t.ID(), "change", change,
						"codes", Codes(out[0].Pod.Findings))
					mu.Lock()
					s.next[j.t.ID()] = time.Now().Add(a.cfg.Debounce)
					mu.Unlock()
					return
				}
			}
			ps := a.apply(j.t, out[0], j.why)
			mu.Lock()
			defer mu.Unlock()
			if ps.Failures > 0 {
				backoff := min(a.cfg.BackoffBase<<min(ps.Failures-1, 20), a.cfg.BackoffMax, a.cfg.RecheckInterval)
				s.next[ps.Key()] = time.Now().Add(backoff)
			} else {
				s.next[ps.Key()] = s.nextCheck(time.Now(), a.cfg.RecheckInterval, a.cfg.Jitter)
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if p.all {
		a.mu.Lock()
		a.ready = true
		a.sweeps++
		a.lastSweep = time.Now()
		a.mu.Unlock()
		a.log.Info("node sweep done", "why", p.why, "pods", len(seen), "checked", len(jobs), "duration", time.Since(start).String())
	}
	return nil
}

// changedDuringCheck lists the node again after a check found t broken and says how the pod
// differs from what the check was given ("" when it does not, or when the runtime cannot say):
// gone (its sandbox stopped), recreated, or its containers changed. A broken verdict is an alarm
// on a pod; one that the pod's own stopping produced is a false one.
func (a *Agent) changedDuringCheck(ctx context.Context, t nodecheck.Target) string {
	// Fresh: the events that would have dropped a cached listing may still be on their way.
	targets, err := a.cfg.Runtime.Discover(discover.Fresh(ctx))
	if err != nil {
		return "" // the check's result stands on what it read
	}
	for _, now := range targets {
		if now.ID() != t.ID() {
			continue
		}
		switch {
		case now.UID != t.UID:
			return "recreated"
		case !sameRun(t, now):
			return "its containers changed"
		}
		return ""
	}
	return "left the node (its sandbox stopped)"
}

// apply records one pod's outcome, tells the observers, and logs what was checked and why.
func (a *Agent) apply(t nodecheck.Target, oc diagnose.Outcome, why string) PodState {
	for _, r := range oc.Pod.Checks {
		if a.cfg.OnCheckRun != nil {
			a.cfg.OnCheckRun(r)
		}
	}
	now := time.Now()
	a.mu.Lock()
	prev := a.pods[t.ID()]
	cur := PodState{Target: t, Outcome: oc, Since: now, Checked: now, Why: why}
	if prev != nil && prev.Target.UID == t.UID {
		if prev.Outcome.Pod.Verdict == oc.Pod.Verdict && slices.Equal(prev.Codes(), cur.Codes()) {
			cur.Since = prev.Since
		}
		if oc.Pod.Verdict == nodecheck.VerdictUnknown {
			cur.Failures = prev.Failures + 1
		}
	} else if oc.Pod.Verdict == nodecheck.VerdictUnknown {
		cur.Failures = 1
	}
	a.pods[t.ID()] = &cur
	var prevCopy *PodState
	if prev != nil {
		c := *prev
		prevCopy = &c
	}
	for _, o := range a.observers {
		o.PodChecked(prevCopy, cur)
	}
	a.mu.Unlock()

	attrs := []any{"pod", t.ID(), "why", why, "verdict", oc.Pod.Verdict, "codes", cur.Codes()}
	switch {
	case prev == nil || prev.Outcome.Pod.Verdict != oc.Pod.Verdict || !slices.Equal(prev.Codes(), cur.Codes()):
		if prev != nil {
			attrs = append(attrs, "was", prev.Outcome.Pod.Verdict)
		}
		if oc.Pod.Reason != "" {
			attrs = append(attrs, "reason", oc.Pod.Reason)
		}
		a.log.Info("pod checked: verdict changed", attrs...)
	default:
		a.log.Debug("pod checked", attrs...)
	}
	return cur
}

// wantedWhy returns why a triggered pass wants the target, or "".
func wantedWhy(wanted map[string]string, t nodecheck.Target) string {
	sels := []string{"key:" + t.ID(), "uid:" + t.UID, "id:" + t.SandboxID}
	for _, c := range t.Containers {
		sels = append(sels, "id:"+c.ID)
	}
	for _, sel := range sels {
		if w, ok := wanted[sel]; ok && !strings.HasSuffix(sel, ":") {
			return w
		}
	}
	return ""
}

// sameRun reports whether nothing that makes a new check worth it changed between two
// discoveries of a pod: containers started, exited or restarted, the netns, what discovery could
// not read. It runs for every pod on every pass, so it compares rather than renders.
func sameRun(a, b nodecheck.Target) bool {
	if a.Netns != b.Netns || a.SkipReason != b.SkipReason || a.DiscoveryError != b.DiscoveryError ||
		len(a.Containers) != len(b.Containers) {
		return false
	}
	for i, c := range a.Containers {
		d := b.Containers[i]
		if c.Name != d.Name || c.ID != d.ID || c.State != d.State || c.ExitCode != d.ExitCode || c.Attempt != d.Attempt {
			return false
		}
	}
	return true
}
