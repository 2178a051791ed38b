package metrics_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/agent/metrics"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
)

var update = flag.Bool("update", false, "rewrite the expected expositions under testdata/")

// state is an agent's state as the metrics read it.
type state struct{ pods []agent.PodState }

func (s state) Pods() []agent.PodState { return s.pods }
func (s state) Node() agent.NodeState  { return agent.NodeState{} }
func (s state) LastSweep() time.Time   { return time.Time{} }

// pod is a pod's last check as the agent holds it.
func pod(name string, v nodecheck.Verdict, mode, verifiedBy string) agent.PodState {
	return agent.PodState{
		Target: nodecheck.Target{Namespace: "shop", Name: name},
		Outcome: diagnose.Outcome{Pod: nodecheck.PodReport{
			Namespace: "shop", Name: name, Verdict: v,
			Capture: nodecheck.Capture{Mode: mode, VerifiedBy: verifiedBy},
		}},
	}
}

// TestCaptureCoverage: the pods by verdict, capture state and mode, and the node's capture
// coverage, as a scrape shows them for each node (expected exposition in testdata/NAME.txt).
func TestCaptureCoverage(t *testing.T) {
	for _, tc := range []struct {
		name string
		pods []agent.PodState
	}{
		// A node without pods: every series at zero, and nothing uncovered.
		{"no-pods", nil},
		// Only pods not meant to be captured: still nothing uncovered.
		{"only-skipped", []agent.PodState{
			pod("batch", nodecheck.VerdictSkipped, "none", ""),
			pod("host", nodecheck.VerdictSkipped, "none", ""),
		}},
		// Every state once: verified by traffic, ok by rules alone, broken, unknown, skipped.
		// One of four pods meant to be captured is proven.
		{"every-state", []agent.PodState{
			pod("cart", nodecheck.VerdictOK, "sidecar-redirect", nodecheck.VerifiedByTraffic),
			pod("checkout", nodecheck.VerdictOK, "ambient", nodecheck.VerifiedByRules),
			pod("payments", nodecheck.VerdictBroken, "sidecar-tproxy", nodecheck.VerifiedByRules),
			pod("gone", nodecheck.VerdictUnknown, "none", ""),
			pod("batch", nodecheck.VerdictSkipped, "none", ""),
		}},
		// Traffic proof does not make a broken pod verified; a mode outside the four counts as
		// none, so a check cannot grow the label.
		{"broken-despite-traffic", []agent.PodState{
			pod("cart", nodecheck.VerdictOK, "sidecar-redirect", nodecheck.VerifiedByTraffic),
			pod("payments", nodecheck.VerdictBroken, "sidecar-redirect", nodecheck.VerifiedByTraffic),
			pod("odd", nodecheck.VerdictOK, "sidecar-something", nodecheck.VerifiedByTraffic),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New(metrics.Options{Version: "test"})
			m.Watch(state{pods: tc.pods})
			got := exposition(t, m, "meshdoctor_pods", "meshdoctor_capture_verified_ratio")
			compareGolden(t, filepath.Join("testdata", tc.name+".txt"), got, *update)
		})
	}
}

// exposition is the text exposition of the named families of m's registry, in the order named.
func exposition(t *testing.T, m *metrics.Metrics, names ...string) []byte {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, name := range names {
		found := false
		for _, f := range families {
			if f.GetName() == name {
				found = true
				if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !found {
			t.Errorf("the registry has no %s", name)
		}
	}
	return b.Bytes()
}

func compareGolden(t *testing.T, want string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.WriteFile(want, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	exp, err := os.ReadFile(want)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, exp) {
		t.Errorf("exposition differs from %s:\n--- got\n%s--- want\n%s", want, got, exp)
	}
}
