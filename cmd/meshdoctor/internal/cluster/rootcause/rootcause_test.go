package rootcause

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// The inputs under testdata/ are shaped as the API server returns them (kubectl get -o json).
// testdata/reports/ are two agents' /debug/report and the FailedCreate messages are Pod Security
// Admission's own, all captured from test/cluster's end-to-end run (go test ./test/cluster -keep
// DIR). Each case's expected.json is the findings, reviewed; -update rewrites them.
var update = flag.Bool("update", false, "rewrite testdata/*/*/expected.json")

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// golden compares findings with the case's expected.json, through JSON as reports carry them.
func golden(t *testing.T, dir string, got []nodecheck.Finding) {
	t.Helper()
	if got == nil {
		got = []nodecheck.Finding{}
	}
	data, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, '\n')
	path := filepath.Join(dir, "expected.json")
	if *update {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if !bytes.Equal(data, want) {
		t.Errorf("findings differ from %s:\n%s", path, data)
	}
}

func cases(t *testing.T, analysis string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join("testdata", analysis, "*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases under testdata/%s: %v", analysis, err)
	}
	return dirs
}

func report(t *testing.T, name string) nodecheck.Report {
	t.Helper()
	var rep nodecheck.Report
	readJSON(t, filepath.Join("testdata", "reports", name), &rep)
	return rep
}

// TestStrippedCapabilities: node-a's report (shop/pay's istio-init ran without its
// capabilities) against shop/pay as the API server admitted it, in each case's variant.
func TestStrippedCapabilities(t *testing.T) {
	rep := report(t, "node-a.json")
	want := map[string]bool{ // whether the case yields PodSecurityBlocksInit
		"stripped-after-admission": true, "admitted-without": true,
		"replaced-pod": false, "custom-init-not-injected": false, "healthy": false,
	}
	for _, dir := range cases(t, "capabilities") {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var pod corev1.Pod
			readJSON(t, filepath.Join(dir, "pod.json"), &pod)
			i := slices.IndexFunc(rep.Pods, func(p nodecheck.PodReport) bool { return p.Namespace == pod.Namespace && p.Name == pod.Name })
			if i < 0 {
				t.Fatalf("no pod %s/%s in the report", pod.Namespace, pod.Name)
			}
			var got []nodecheck.Finding
			if f, ok := StrippedCapabilities(rep.Pods[i], &pod); ok {
				got = append(got, f)
			}
			if w, ok := want[filepath.Base(dir)]; !ok || w != (len(got) == 1) {
				t.Errorf("finding: %v, want %v", len(got) == 1, w)
			}
			golden(t, dir, got)
		})
	}
}

func TestPodSecurity(t *testing.T) {
	want := map[string][]nodecheck.Severity{
		"refused-baseline":            {nodecheck.SeverityError},
		"labels-only":                 {nodecheck.SeverityWarning},
		"labels-cni-installed":        nil,
		"injection-disabled":          nil,
		"cluster-default-level":       {nodecheck.SeverityError},
		"cni-installed-init-injected": {nodecheck.SeverityError},
		"unrelated-events":            nil,
		"many-owners":                 {nodecheck.SeverityError},
	}
	for _, dir := range cases(t, "podsecurity") {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var nss corev1.NamespaceList
			var evs corev1.EventList
			var c struct {
				IstioCNI CNIInstall `json:"istioCNI"`
			}
			readJSON(t, filepath.Join(dir, "namespaces.json"), &nss)
			readJSON(t, filepath.Join(dir, "events.json"), &evs)
			readJSON(t, filepath.Join(dir, "case.json"), &c)
			// Events before namespaces, and in reverse: the fold does not depend on the order.
			var runs [2][]nodecheck.Finding
			for k := range runs {
				p := NewPodSecurity()
				if k == 1 {
					slices.Reverse(evs.Items)
					for i := range evs.Items {
						p.AddEvent(&evs.Items[i])
					}
				}
				for i := range nss.Items {
					p.AddNamespace(&nss.Items[i])
				}
				if k == 0 {
					for i := range evs.Items {
						p.AddEvent(&evs.Items[i])
					}
				}
				runs[k] = p.Findings(c.IstioCNI)
			}
			a, _ := json.Marshal(runs[0])
			b, _ := json.Marshal(runs[1])
			if !bytes.Equal(a, b) {
				t.Errorf("the findings depend on the order of the events:\n%s\n%s", a, b)
			}
			var sev []nodecheck.Severity
			for _, f := range runs[0] {
				sev = append(sev, f.Severity)
				if f.Code != nodecheck.PodSecurityBlocksInit {
					t.Errorf("code %s", f.Code)
				}
			}
			if w, ok := want[filepath.Base(dir)]; !ok || !slices.Equal(sev, w) {
				t.Errorf("severities %v, want %v", sev, w)
			}
			golden(t, dir, runs[0])
		})
	}
}

func TestCoverage(t *testing.T) {
	want := map[string]struct {
		installed CNIInstall
		gap       bool
	}{
		"cni-mode-no-agent": {CNINotInstalled, true},
		"covered":           {CNIInstalled, false},
		"agent-not-ready":   {CNIInstalled, true},
		"ambient":           {CNIInstalled, true},
		"istio-init-only":   {CNINotInstalled, false},
		"ignored-pods":      {CNINotInstalled, false},
		"many-nodes":        {CNINotInstalled, true},
	}
	for _, dir := range cases(t, "coverage") {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var nss corev1.NamespaceList
			var pods corev1.PodList
			readJSON(t, filepath.Join(dir, "namespaces.json"), &nss)
			readJSON(t, filepath.Join(dir, "pods.json"), &pods)
			c := NewCoverage()
			for i := range nss.Items {
				c.AddNamespace(&nss.Items[i])
			}
			for i := range pods.Items {
				c.AddPod(&pods.Items[i])
			}
			got := c.Findings()
			w := want[filepath.Base(dir)]
			if c.Installed() != w.installed || (len(got) == 1) != w.gap || len(got) > 1 {
				t.Errorf("installed %s, %d finding(s); want %s, gap %v", c.Installed(), len(got), w.installed, w.gap)
			}
			golden(t, dir, got)
		})
	}
}

func TestAPIServerAvailability(t *testing.T) {
	want := map[string]bool{"single-endpoint": true, "highly-available": true, "no-outage": false, "no-ready-endpoint": true,
		"no-istiod": true}
	for _, dir := range cases(t, "apiserver") {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var a APIServer
			var l discoveryv1.EndpointSliceList
			readJSON(t, filepath.Join(dir, "endpointslices.json"), &l)
			for i := range l.Items {
				a.AddEndpointSlice(&l.Items[i])
			}
			var deps appsv1.DeploymentList
			readJSON(t, filepath.Join(dir, "deployments.json"), &deps)
			for i := range deps.Items {
				a.AddDeployment(&deps.Items[i])
			}
			var c struct{ Reports []string }
			readJSON(t, filepath.Join(dir, "case.json"), &c)
			var o IstiodOutage
			for _, name := range c.Reports {
				rep := report(t, name)
				for _, f := range rep.Findings {
					o.Add(rep.Node, f)
				}
			}
			var got []nodecheck.Finding
			if f, ok := APIServerAvailability(a, o); ok {
				got = append(got, f)
			}
			if (len(got) == 1) != want[filepath.Base(dir)] {
				t.Errorf("finding: %v, want %v", len(got) == 1, want[filepath.Base(dir)])
			}
			golden(t, dir, got)
		})
	}
}

// TestSample: the kept names are the first in name order whatever order they come in.
func TestSample(t *testing.T) {
	for _, order := range [][]string{{"e", "d", "c", "b", "a", "f"}, {"a", "b", "c", "d", "e", "f"}, {"f", "a", "e", "b", "d", "c", "a"}} {
		var s sample
		for _, n := range order {
			s.add(n, 3)
		}
		if !slices.Equal(s.Names, []string{"a", "b", "c"}) || s.String() != "a, b, c and "+map[int]string{6: "3", 7: "3"}[len(order)]+" more" {
			t.Errorf("%v: %v %q", order, s.Names, s.String())
		}
	}
}
