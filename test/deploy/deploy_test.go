// Package deploy_test checks deploy/ for real: the Helm chart rendered by the real helm, the
// kustomize base rendered from it and built by the real kubectl, every object dry-run by a real
// kube-apiserver against prometheus-operator's real CRDs, the admission policy enforced by that
// API server on a ServiceAccount token bound to a pod of a node, the chart's RBAC given to the
// real agent binary and compared with what it calls (the API server's audit log), the DaemonSet's
// container run by a real containerd with the DaemonSet's own privileges and mounts, and the
// alerts and dashboard checked with promtool and against a real agent's exposition.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// binary is the meshdoctor under test: $MESHDOCTOR_BIN (make test sets it), else built here.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	path, cleanup, err := testbed.BuildMeshdoctor()
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploy tests: %v\n", err)
		os.Exit(2)
	}
	binary = path
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// kubeVersion is the Kubernetes version the chart is rendered for: the test API server's.
var kubeVersion = strings.TrimPrefix(testbed.KubeAPIServerVersion, "v")

// deployDir is the repository's deploy/ directory.
func deployDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func chartDir(t *testing.T) string { return filepath.Join(deployDir(t), "helm", "meshdoctor") }

// helmTemplate renders the chart as release meshdoctor in namespace meshdoctor with --set values.
func helmTemplate(t *testing.T, values ...string) []byte {
	t.Helper()
	return testbed.RenderChart(t, values...)
}

// everyOption are the values that turn on every optional object and code path of the chart.
var everyOption = []string{
	"monitoring.serviceMonitor.enabled=true", "monitoring.podMonitor.enabled=true",
	"monitoring.prometheusRule.enabled=true", "monitoring.dashboard.enabled=true",
}

// run runs a command with stdin and returns its stdout; the error carries stderr.
func run(t *testing.T, stdin []byte, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(name), strings.Join(args, " "), err, stderr.Bytes(), out)
	}
	return out, nil
}

// objects decodes a multi-document YAML stream into objects, skipping empty documents.
func objects(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decoding manifests: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

// key names an object: kind/namespace/name.
func key(o *unstructured.Unstructured) string {
	return o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
}

// find returns the object of that kind and name.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s among the rendered objects", kind, name)
	return nil
}

// TestKustomizeIsRenderedFromChart: deploy/kustomize is what deploy/render-kustomize.sh makes of
// the chart today (make manifests), so the two never drift apart.
func TestKustomizeIsRenderedFromChart(t *testing.T) {
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), filepath.Join(deployDir(t), "render-kustomize.sh"), out)
	cmd.Env = append(os.Environ(), "HELM="+testbed.Helm(t), "KUBE_VERSION="+kubeVersion)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render-kustomize.sh: %v\n%s", err, b)
	}
	committed := filepath.Join(deployDir(t), "kustomize")
	want, got := tree(t, out), tree(t, committed)
	for name, content := range want {
		if got[name] != content {
			t.Errorf("deploy/kustomize/%s differs from the chart's rendering: run `make manifests`", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("deploy/kustomize/%s is not rendered from the chart any more: run `make manifests`", name)
		}
	}
}

// tree reads every file under dir, by path relative to it.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[rel] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// overlay writes a kustomization that takes the base and every component, as a user's would.
func overlay(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	// kustomize takes relative paths only.
	k, err := filepath.Rel(dir, filepath.Join(deployDir(t), "kustomize"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + filepath.Join(k, "base") + "\ncomponents:\n")
	entries, err := os.ReadDir(filepath.Join(deployDir(t), "kustomize", "components"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b.WriteString("  - " + filepath.Join(k, "components", e.Name()) + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestChartAndKustomizeInstallTheSameObjects: `kubectl kustomize` of the base with every component
// and `helm template` with every option give the same objects, but for Helm's own two labels.
func TestChartAndKustomizeInstallTheSameObjects(t *testing.T) {
	built, err := run(t, nil, testbed.Kubectl(t), "kustomize", overlay(t))
	if err != nil {
		t.Fatal(err)
	}
	fromKustomize := map[string]*unstructured.Unstructured{}
	for _, o := range objects(t, built) {
		fromKustomize[key(o)] = o
	}
	fromHelm := map[string]*unstructured.Unstructured{}
	for _, o := range objects(t, helmTemplate(t, everyOption...)) {
		for _, labels := range [][]string{{"metadata", "labels"}, {"spec", "template", "metadata", "labels"}} {
			unstructured.RemoveNestedField(o.Object, append(labels, "helm.sh/chart")...)
			unstructured.RemoveNestedField(o.Object, append(labels, "app.kubernetes.io/managed-by")...)
		}
		fromHelm[key(o)] = o
	}
	var names []string
	for k := range fromHelm {
		names = append(names, k)
	}
	sort.Strings(names)
	t.Logf("%d objects: %s", len(names), strings.Join(names, ", "))
	for k, h := range fromHelm {
		kz, ok := fromKustomize[k]
		if !ok {
			t.Errorf("%s: in the chart, not in kustomize", k)
			continue
		}
		hj, _ := h.MarshalJSON()
		kj, _ := kz.MarshalJSON()
		if !bytes.Equal(hj, kj) {
			t.Errorf("%s differs:\nhelm:      %s\nkustomize: %s", k, hj, kj)
		}
	}
	for k := range fromKustomize {
		if _, ok := fromHelm[k]; !ok {
			t.Errorf("%s: in kustomize, not in the chart", k)
		}
	}
}
