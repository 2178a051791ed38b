package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The versions test/setup.sh builds kubectl (KubeAPIServerVersion's), helm and fetches
// prometheus-operator's CRDs at. Keep them in sync with HELM_VERSION and
// PROMETHEUS_OPERATOR_VERSION in test/setup.sh.
const (
	HelmVersion               = "v3.22.0"
	PrometheusOperatorVersion = "v0.85.0"
)

// Kubectl returns the kubectl test/setup.sh built from k8s.io/kubernetes at KubeAPIServerVersion.
// When it is missing the test is skipped with a hint to run test/setup.sh, or failed when CI=true.
func Kubectl(tb testing.TB) string {
	tb.Helper()
	return cachedBinary(tb, "kubectl-"+KubeAPIServerVersion)
}

// Helm returns the helm test/setup.sh built, like Kubectl.
func Helm(tb testing.TB) string {
	tb.Helper()
	return cachedBinary(tb, "helm-"+HelmVersion)
}

// Promtool returns the promtool test/setup.sh built, like Kubectl.
func Promtool(tb testing.TB) string {
	tb.Helper()
	return cachedBinary(tb, "promtool-"+PromtoolVersion)
}

// RenderChart renders meshdoctor's Helm chart (deploy/helm/meshdoctor) as release meshdoctor in
// namespace meshdoctor with --set values, for the Kubernetes version of the test API server (helm
// built with `go install` otherwise assumes v1.20, which the chart's kubeVersion refuses).
func RenderChart(tb testing.TB, values ...string) []byte {
	tb.Helper()
	chart, err := filepath.Abs(filepath.Join(repoRoot(tb), "deploy", "helm", "meshdoctor"))
	if err != nil {
		tb.Fatal(err)
	}
	args := []string{"template", "meshdoctor", chart, "--namespace", "meshdoctor",
		"--kube-version", strings.TrimPrefix(KubeAPIServerVersion, "v")}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.Command(Helm(tb), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("testbed: helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// repoRoot is the top of the checkout the test runs in (where go.mod is).
func repoRoot(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		tb.Fatalf("testbed: finding the module's root: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// PrometheusOperatorCRDs returns the directory of prometheus-operator's CRDs (ServiceMonitor,
// PodMonitor, PrometheusRule…), from its module, which test/setup.sh puts in the Go module cache.
func PrometheusOperatorCRDs(tb testing.TB) string {
	tb.Helper()
	mod := "github.com/prometheus-operator/prometheus-operator@" + PrometheusOperatorVersion
	// An empty GOFLAGS and no proxy: the answer comes from the module cache alone.
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOPROXY=off")
	out, err := cmd.Output()
	if err != nil {
		skipOrFatal(tb, "testbed: %s is not in the module cache (%v): run test/setup.sh", mod, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		tb.Fatalf("testbed: go mod download -json %s: %v\n%s", mod, err, out)
	}
	dir := filepath.Join(m.Dir, "example", "prometheus-operator-crd")
	if _, err := os.Stat(dir); err != nil {
		tb.Fatalf("testbed: %s has no CRDs where expected: %v", mod, fmt.Errorf("%s: %w", dir, err))
	}
	return dir
}
