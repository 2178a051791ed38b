package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// errorFindings lists the findings of severity error in a report, pod and node level alike, as
// "where: Code".
func errorFindings(rep nodecheck.Report) []string {
	var out []string
	for _, f := range rep.Findings {
		if f.Severity == nodecheck.SeverityError {
			out = append(out, "node: "+string(f.Code))
		}
	}
	for _, p := range rep.Pods {
		for _, f := range p.Findings {
			if f.Severity == nodecheck.SeverityError {
				out = append(out, fmt.Sprintf("pod %s/%s: %s", p.Namespace, p.Name, f.Code))
			}
		}
	}
	return out
}

func readGolden(t *testing.T, name string) nodecheck.Report {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatalf("healthy scenario %s has no golden report (go test ./test/e2e -update writes it): %v", name, err)
	}
	var rep nodecheck.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	return rep
}

// A healthy pod must not cost its operator a page: across every healthy scenario of the test
// data (the netns table and the injected pods), the golden reports hold no error finding and
// every pod is ok; and no golden at all says ok of a pod it gives an error.
func TestHealthyScenariosHaveNoErrors(t *testing.T) {
	var healthy []string
	for _, sc := range scenarios() {
		if sc.verdict == nodecheck.VerdictOK {
			healthy = append(healthy, sc.name)
		}
	}
	for _, sc := range podScenarios() {
		if sc.verdict == nodecheck.VerdictOK {
			healthy = append(healthy, filepath.Join("pods", sc.name))
		}
	}
	for _, name := range healthy {
		rep := readGolden(t, name)
		if len(rep.Pods) == 0 {
			t.Errorf("%s: the golden report has no pod", name)
		}
		for _, p := range rep.Pods {
			if p.Verdict != nodecheck.VerdictOK {
				t.Errorf("%s: pod %s/%s is %s in a healthy scenario", name, p.Namespace, p.Name, p.Verdict)
			}
		}
		if errs := errorFindings(rep); len(errs) > 0 {
			t.Errorf("%s: error findings in a healthy scenario: %s", name, strings.Join(errs, ", "))
		}
	}

	goldens := 0
	err := filepath.WalkDir("testdata", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".json" {
			return err
		}
		goldens++
		name := strings.TrimSuffix(strings.TrimPrefix(path, "testdata"+string(filepath.Separator)), ".json")
		rep := readGolden(t, name)
		for _, p := range rep.Pods {
			if p.Verdict != nodecheck.VerdictOK {
				continue
			}
			if errs := errorFindings(nodecheck.Report{Pods: []nodecheck.PodReport{p}}); len(errs) > 0 {
				t.Errorf("%s: the pod is ok with error findings: %s", name, strings.Join(errs, ", "))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if goldens < len(healthy) {
		t.Errorf("walked %d goldens, fewer than the %d healthy scenarios", goldens, len(healthy))
	}
	t.Logf("%d healthy scenarios, %d goldens walked", len(healthy), goldens)
}

// The walk above fails when an error is there, at pod or node level, and passes on warnings.
func TestErrorFindings(t *testing.T) {
	warn := nodecheck.Finding{Code: nodecheck.CaptureIntentDrift, Severity: nodecheck.SeverityWarning}
	bad := nodecheck.Finding{Code: nodecheck.ProxyUIDMismatch, Severity: nodecheck.SeverityError}
	pod := func(fs ...nodecheck.Finding) nodecheck.PodReport {
		return nodecheck.PodReport{Namespace: "shop", Name: "cart", Verdict: nodecheck.VerdictOK, Findings: fs}
	}
	for _, tc := range []struct {
		rep  nodecheck.Report
		want string
	}{
		{rep: nodecheck.Report{Pods: []nodecheck.PodReport{pod(warn)}}},
		{rep: nodecheck.Report{Pods: []nodecheck.PodReport{pod(warn, bad)}}, want: "pod shop/cart: ProxyUIDMismatch"},
		{rep: nodecheck.Report{Findings: []nodecheck.Finding{bad}, Pods: []nodecheck.PodReport{pod()}}, want: "node: ProxyUIDMismatch"},
	} {
		if got := strings.Join(errorFindings(tc.rep), ", "); got != tc.want {
			t.Errorf("errorFindings = %q, want %q", got, tc.want)
		}
	}
}
