package diagnose

import (
	"context"
	"errors"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

type fixedCheck struct {
	res   nodecheck.Result
	err   error
	calls *int
}

func (f fixedCheck) Name() string { return "fixed" }

func (f fixedCheck) Check(context.Context, nodecheck.Target) (nodecheck.Result, error) {
	*f.calls++
	return f.res, f.err
}

// Discovery decides some pods are not meant to be captured, and sometimes cannot describe a pod
// fully: the verdicts must say so, and a proven problem still wins over an unknown.
func TestVerdictsFromDiscovery(t *testing.T) {
	broken := nodecheck.Result{Findings: []nodecheck.Finding{{Code: nodecheck.RedirectRulesMissing, Severity: nodecheck.SeverityError}}}
	cases := []struct {
		name        string
		target      nodecheck.Target
		res         nodecheck.Result
		err         error
		wantVerdict nodecheck.Verdict
		wantReason  string
		wantCalls   int
	}{
		{"skipped runs no check", nodecheck.Target{Name: "a", SkipReason: "host network"}, nodecheck.Result{}, nil,
			nodecheck.VerdictSkipped, "host network", 0},
		{"discovery error makes ok unknown", nodecheck.Target{Name: "b", DiscoveryError: "sandbox removed"}, nodecheck.Result{}, nil,
			nodecheck.VerdictUnknown, "sandbox removed", 1},
		{"discovery error and check error", nodecheck.Target{Name: "c", DiscoveryError: "sandbox removed"}, nodecheck.Result{}, errors.New("netns gone"),
			nodecheck.VerdictUnknown, "sandbox removed; netns gone", 1},
		{"broken wins over discovery error", nodecheck.Target{Name: "d", DiscoveryError: "status failed"}, broken, nil,
			nodecheck.VerdictBroken, "", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			r := Runner{Checks: []nodecheck.Check{fixedCheck{res: c.res, err: c.err, calls: &calls}}}
			out := r.Run(t.Context(), []nodecheck.Target{c.target})
			p := out[0].Pod
			if p.Verdict != c.wantVerdict || p.Reason != c.wantReason || calls != c.wantCalls {
				t.Errorf("verdict %s reason %q calls %d; want %s %q %d", p.Verdict, p.Reason, calls, c.wantVerdict, c.wantReason, c.wantCalls)
			}
		})
	}
}
