// Package diagnose runs the checks and turns what they find into verdicts.
//
// # Pods
//
// Runner runs every pod check on every target, in parallel with a bound, each check timed, a
// failing or panicking check never taking the others down, and gives one verdict per target. The
// verdict follows the verified capture: once a pod's rules verify, a reason istio-init could not
// write them is a warning.
//
// # The node
//
// NodeRunner runs the node-level checks for both `check` and the agent.
package diagnose

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
)

// Runner runs a fixed list of checks.
type Runner struct {
	Checks []nodecheck.Check
	// Parallel bounds how many targets are checked at once (default 4).
	Parallel int
	Log      *slog.Logger
}

// Outcome is one target's report plus each check's detail, for the debug endpoint.
type Outcome struct {
	Pod     nodecheck.PodReport
	Details map[string]any
}

// Run checks every target and returns their outcomes in the targets' order.
func (r *Runner) Run(ctx context.Context, targets []nodecheck.Target) []Outcome {
	par := r.Parallel
	if par <= 0 {
		par = 4
	}
	out := make([]Outcome, len(targets))
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = r.checkTarget(ctx, t)
		}()
	}
	wg.Wait()
	return out
}

func (r *Runner) logger() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (r *Runner) checkTarget(ctx context.Context, t nodecheck.Target) Outcome {
	o := Outcome{
		Pod: nodecheck.PodReport{
			Namespace: t.Namespace, Name: t.Name, UID: t.UID, Netns: t.Netns,
			Capture:  nodecheck.Capture{Mode: "none", Backend: "none"},
			Findings: []nodecheck.Finding{},
		},
		Details: map[string]any{},
	}
	if t.SkipReason != "" {
		o.Pod.Verdict, o.Pod.Reason = nodecheck.VerdictSkipped, t.SkipReason
		return o
	}
	if t.StartingUp != "" {
		// Rules not written yet are no broken capture: judged once its rule writer has run.
		o.Pod.Verdict, o.Pod.Reason = nodecheck.VerdictUnknown, t.StartingUp
		return o
	}
	var errs []error
	captureVerified := false
	for _, c := range r.Checks {
		start := time.Now()
		res, err := r.safeCheck(ctx, c, t)
		run := nodecheck.CheckRun{Check: c.Name(), Duration: time.Since(start), Result: "ok"}
		switch {
		case err != nil:
			run.Result, run.Error = "error", err.Error()
			errs = append(errs, err)
			r.logger().Warn("check could not run", "check", c.Name(), "target", t.ID(), "err", err)
		case len(res.Findings) > 0:
			run.Result = "findings"
		}
		r.logger().Debug("check done", "check", c.Name(), "target", t.ID(), "result", run.Result,
			"findings", len(res.Findings), "duration", run.Duration)
		o.Pod.Checks = append(o.Pod.Checks, run)
		o.Pod.Findings = append(o.Pod.Findings, res.Findings...)
		if res.Capture != nil {
			o.Pod.Capture = *res.Capture
			captureVerified = err == nil && res.Capture.VerifiedBy != "" && !hasError(res.Findings)
		}
		if res.Detail != nil {
			o.Details[c.Name()] = res.Detail
		}
	}
	settleRootCauses(o.Pod.Findings, captureVerified)
	o.Pod.Verdict = nodecheck.VerdictOK
	for _, f := range o.Pod.Findings {
		if f.Severity == nodecheck.SeverityError {
			o.Pod.Verdict = nodecheck.VerdictBroken
		}
	}
	if len(errs) > 0 && o.Pod.Verdict != nodecheck.VerdictBroken {
		o.Pod.Verdict = nodecheck.VerdictUnknown
		o.Pod.Reason = errors.Join(errs...).Error()
		if errors.Is(errors.Join(errs...), innetns.ErrNetnsGone) {
			o.Pod.Reason = "the pod's network namespace disappeared during the check (pod deleted?): " + o.Pod.Reason
		}
	}
	if t.DiscoveryError != "" && o.Pod.Verdict != nodecheck.VerdictBroken {
		o.Pod.Verdict = nodecheck.VerdictUnknown
		if o.Pod.Reason == "" {
			o.Pod.Reason = t.DiscoveryError
		} else {
			o.Pod.Reason = t.DiscoveryError + "; " + o.Pod.Reason
		}
	}
	return o
}

func hasError(findings []nodecheck.Finding) bool {
	for _, f := range findings {
		if f.Severity == nodecheck.SeverityError {
			return true
		}
	}
	return false
}

// safeCheck turns a panicking check into an error so one bad check cannot take the node down.
func (r *Runner) safeCheck(ctx context.Context, c nodecheck.Check, t nodecheck.Target) (res nodecheck.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("check %s panicked on %s: %v", c.Name(), t.ID(), p)
		}
	}()
	return c.Check(ctx, t)
}
