package diagnose

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istioinit"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// The verdict follows the verified capture: istio-init without NET_ADMIN (the real istio-init
// check's finding) is an error while the rules are missing and a warning once they verify.
func TestVerdictFollowsVerifiedCapture(t *testing.T) {
	pod := nodecheck.Target{Name: "p", Annotations: map[string]string{istiopod.AnnotationSidecarStatus: "{}"},
		Containers: []nodecheck.Container{{Name: istiopod.ContainerIstioInit, Role: nodecheck.RoleInit,
			State: nodecheck.ContainerExited, Capabilities: []string{"CAP_NET_RAW"}, UID: 0, GID: 0}}}
	verified := nodecheck.Result{Capture: &nodecheck.Capture{Mode: "sidecar-redirect", Backend: "nft", VerifiedBy: "rules"}}
	missing := nodecheck.Result{Capture: &nodecheck.Capture{Mode: "sidecar-redirect", Backend: "none", VerifiedBy: "rules"},
		Findings: []nodecheck.Finding{{Code: nodecheck.RedirectRulesMissing, Severity: nodecheck.SeverityError}}}
	cases := []struct {
		name        string
		capture     nodecheck.Result
		err         error
		wantVerdict nodecheck.Verdict
		wantInit    nodecheck.Severity
	}{
		{"rules verify", verified, nil, nodecheck.VerdictOK, nodecheck.SeverityWarning},
		{"rules missing", missing, nil, nodecheck.VerdictBroken, nodecheck.SeverityError},
		{"rules unread", nodecheck.Result{}, errors.New("netns gone"), nodecheck.VerdictBroken, nodecheck.SeverityError},
		{"no rules read (mode NONE)", nodecheck.Result{Capture: &nodecheck.Capture{Mode: "none", Backend: "none"}}, nil,
			nodecheck.VerdictBroken, nodecheck.SeverityError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			r := Runner{Checks: []nodecheck.Check{istioinit.Check{}, fixedCheck{res: c.capture, err: c.err, calls: &calls}}}
			p := r.Run(t.Context(), []nodecheck.Target{pod})[0].Pod
			if p.Verdict != c.wantVerdict {
				t.Errorf("verdict %s, want %s (%+v)", p.Verdict, c.wantVerdict, p.Findings)
			}
			var init *nodecheck.Finding
			for i := range p.Findings {
				if p.Findings[i].Code == nodecheck.InitMissingNetAdmin {
					init = &p.Findings[i]
				}
			}
			if init == nil || init.Severity != c.wantInit {
				t.Fatalf("InitMissingNetAdmin %+v, want severity %s", init, c.wantInit)
			}
			if c.wantInit == nodecheck.SeverityWarning && !strings.Contains(init.Message, "next restart") {
				t.Errorf("the warning does not say the next restart fails: %s", init.Message)
			}
		})
	}
}

// A pod whose istio-init has not run yet is not judged: no check runs, its verdict is unknown
// with the reason, never broken for rules not written yet.
func TestStartingPodIsNotJudged(t *testing.T) {
	calls := 0
	missing := nodecheck.Result{Capture: &nodecheck.Capture{Mode: "sidecar-redirect", Backend: "none", VerifiedBy: "rules"},
		Findings: []nodecheck.Finding{{Code: nodecheck.RedirectRulesMissing, Severity: nodecheck.SeverityError}}}
	r := Runner{Checks: []nodecheck.Check{fixedCheck{res: missing, calls: &calls}}}
	starting := nodecheck.Target{Name: "p", StartingUp: "the pod is starting: istio-init has not finished (running)"}
	p := r.Run(t.Context(), []nodecheck.Target{starting})[0].Pod
	if p.Verdict != nodecheck.VerdictUnknown || p.Reason != starting.StartingUp || calls != 0 || len(p.Findings) != 0 {
		t.Errorf("starting pod: verdict %s reason %q, %d checks run, findings %+v", p.Verdict, p.Reason, calls, p.Findings)
	}
	starting.StartingUp = ""
	if p := r.Run(t.Context(), []nodecheck.Target{starting})[0].Pod; p.Verdict != nodecheck.VerdictBroken || calls != 1 {
		t.Errorf("once started: verdict %s, %d checks run", p.Verdict, calls)
	}
}
