package diagnose

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

type nodeCheck struct {
	name string
	run  func() (nodecheck.Result, error)
}

func (c nodeCheck) Name() string { return c.name }

func (c nodeCheck) CheckNode(context.Context) (nodecheck.Result, error) { return c.run() }

// One node check failing or panicking leaves the others' findings, in check order; only when
// all fail is the pass a failure.
func TestNodeRunner(t *testing.T) {
	found := func(code nodecheck.Code) func() (nodecheck.Result, error) {
		return func() (nodecheck.Result, error) {
			return nodecheck.Result{Findings: []nodecheck.Finding{{Code: code}}, Detail: string(code)}, nil
		}
	}
	fails := func() (nodecheck.Result, error) { return nodecheck.Result{}, errors.New("journal unreadable") }
	panics := func() (nodecheck.Result, error) { panic("bad index") }

	out := (&NodeRunner{Checks: []nodecheck.NodeCheck{
		nodeCheck{"cni", found(nodecheck.IstioCNINotInstalled)}, nodeCheck{"broken", fails},
		nodeCheck{"panics", panics}, nodeCheck{"logs", found(nodecheck.NsenterErrors)},
	}}).Run(t.Context())
	if len(out.Findings) != 2 || out.Findings[0].Code != nodecheck.IstioCNINotInstalled || out.Findings[1].Code != nodecheck.NsenterErrors {
		t.Errorf("findings %+v", out.Findings)
	}
	var results []string
	for _, r := range out.Runs {
		results = append(results, r.Check+"="+r.Result)
	}
	if got := strings.Join(results, " "); got != "cni=findings broken=error panics=error logs=findings" {
		t.Errorf("runs %s", got)
	}
	if out.AllFailed() || !strings.Contains(out.Err.Error(), "journal unreadable") || !strings.Contains(out.Err.Error(), "panicked: bad index") {
		t.Errorf("err %v, all failed %v", out.Err, out.AllFailed())
	}
	if out.Details["logs"] != string(nodecheck.NsenterErrors) || out.Details["broken"] != nil {
		t.Errorf("details %v", out.Details)
	}
	none := (&NodeRunner{Checks: []nodecheck.NodeCheck{nodeCheck{"broken", fails}}}).Run(t.Context())
	if !none.AllFailed() {
		t.Error("a pass where no check ran is not a failure")
	}
	if (&NodeRunner{}).Run(t.Context()).AllFailed() {
		t.Error("no checks at all is a failure")
	}
}
