package diagnose

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// NodeRunner runs the node-level checks (istio-cni's install, log evidence): the one place both
// `check` and the agent run them from.
type NodeRunner struct {
	Checks []nodecheck.NodeCheck
	Log    *slog.Logger
}

// NodeOutcome is one pass of the node checks: their findings and details in check order, and how
// each run went.
type NodeOutcome struct {
	Findings []nodecheck.Finding
	Runs     []nodecheck.CheckRun
	Details  map[string]any
	// Err joins the errors of the checks that could not run.
	Err error
}

// AllFailed reports whether no node check could run (none configured is not a failure).
func (o NodeOutcome) AllFailed() bool {
	if len(o.Runs) == 0 {
		return false
	}
	for _, r := range o.Runs {
		if r.Result != "error" {
			return false
		}
	}
	return true
}

// Run runs every node check at once and waits for them; a check that fails or panics is logged
// and recorded in its run, and leaves the others alone.
func (r *NodeRunner) Run(ctx context.Context) NodeOutcome {
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	results := make([]nodecheck.Result, len(r.Checks))
	errs := make([]error, len(r.Checks))
	took := make([]time.Duration, len(r.Checks))
	var wg sync.WaitGroup
	for i, c := range r.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			results[i], errs[i] = safeNodeCheck(ctx, c)
			took[i] = time.Since(start)
			log.Debug("node check done", "check", c.Name(), "duration", took[i], "findings", len(results[i].Findings), "err", errs[i])
		}()
	}
	wg.Wait()
	out := NodeOutcome{Findings: []nodecheck.Finding{}, Details: map[string]any{}}
	var failed []error
	for i, c := range r.Checks {
		run := nodecheck.CheckRun{Check: c.Name(), Result: "ok", Duration: took[i]}
		switch {
		case errs[i] != nil:
			run.Result, run.Error = "error", errs[i].Error()
			if ctx.Err() == nil {
				log.Warn("node check could not run", "check", c.Name(), "err", errs[i])
			}
			failed = append(failed, fmt.Errorf("%s: %w", c.Name(), errs[i]))
		case len(results[i].Findings) > 0:
			run.Result = "findings"
		}
		out.Runs = append(out.Runs, run)
		// A check that failed keeps the detail it had gathered (the istio-cni check's chain
		// timeline while the CNI config directory is gone): its findings are not trusted.
		if results[i].Detail != nil {
			out.Details[c.Name()] = results[i].Detail
		}
		if errs[i] == nil {
			out.Findings = append(out.Findings, results[i].Findings...)
		}
	}
	out.Err = errors.Join(failed...)
	return out
}

// safeNodeCheck turns a panicking node check into an error so one bad check cannot take the node
// down.
func safeNodeCheck(ctx context.Context, c nodecheck.NodeCheck) (res nodecheck.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("node check %s panicked: %v", c.Name(), p)
		}
	}()
	return c.CheckNode(ctx)
}
