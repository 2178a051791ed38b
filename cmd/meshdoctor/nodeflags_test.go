package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// nodeRoot lays out a node's files under a temporary --host-root: istio-cni chained in the CNI
// config with its kubeconfig but no plugin binary, istiod logging that it lost the API server, and
// nsenter failing in syslog.
func nodeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyIn := func(from, rel string) {
		t.Helper()
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		write(rel, string(data))
	}
	cases := "../../nodecheck/istiocni/testdata/binary-missing/root/"
	copyIn(cases+"etc/cni/net.d/10-containerd-net.conflist", "etc/cni/net.d/10-containerd-net.conflist")
	copyIn(cases+"var/run/istio-cni/istio-cni-kubeconfig", "var/run/istio-cni/istio-cni-kubeconfig")
	if err := os.MkdirAll(filepath.Join(root, "opt/cni/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(-2 * time.Minute)
	write("var/log/pods/istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b/discovery/0.log",
		fmt.Sprintf("%s stderr F %s\terror\tklog\tfailed to list *v1.Pod: Get \"https://10.96.0.1:443/api/v1/pods\": dial tcp 10.96.0.1:443: connect: connection refused: Failed to watch\ttype=*v1.Pod\n",
			now.UTC().Format(time.RFC3339Nano), now.UTC().Format("2006-01-02T15:04:05.000000Z")))
	write("var/log/syslog", fmt.Sprintf("%s node-1 netns-probe[42]: nsenter: cannot open /var/run/netns/cni-gone: No such file or directory\n",
		now.Format("Jan _2 15:04:05")))
	return root
}

// runMeshdoctor runs the CLI in-process and returns its stdout and exit code.
func runMeshdoctor(t *testing.T, args ...string) ([]byte, int) {
	t.Helper()
	root := newRootCommand(&profiling{})
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	code := exitOK
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case err != nil:
		code = exitCannot
	}
	if code == exitCannot {
		t.Logf("stderr: %s; err: %v", errOut.Bytes(), err)
	}
	return out.Bytes(), code
}

// TestCheckNodeOnly: --node-only reports the node's findings without discovering pods (the
// containerd socket given does not exist), and the exit status follows their severity.
func TestCheckNodeOnly(t *testing.T) {
	root := nodeRoot(t)
	out, code := runMeshdoctor(t, "check", "--node-only", "--host-root", root, "-o", "json",
		"--node-name", "node-1", "--containerd-address", filepath.Join(root, "no-containerd.sock"))
	if code != exitFindings {
		t.Fatalf("exit %d, want %d (error findings)\n%s", code, exitFindings, out)
	}
	var rep nodecheck.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	if len(rep.Pods) != 0 {
		t.Errorf("--node-only checked pods: %+v", rep.Pods)
	}
	var codes []string
	for _, f := range rep.Findings {
		codes = append(codes, string(f.Code)+"/"+string(f.Severity))
	}
	want := []string{"IstioCNIIncomplete/error", "IstiodAPIServerUnreachable/warning", "NsenterErrors/error"}
	if !slices.Equal(codes, want) {
		t.Errorf("findings %v, want %v\n%s", codes, want, out)
	}

	// The same node as a table, for a person.
	out, _ = runMeshdoctor(t, "check", "--node-only", "--host-root", root, "--node-name", "node-1")
	if !bytes.Contains(out, []byte("node findings:")) || !bytes.Contains(out, []byte("IstioCNIIncomplete")) {
		t.Errorf("table without the node findings:\n%s", out)
	}
}

func TestCheckLogRulesAndSince(t *testing.T) {
	root := nodeRoot(t)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, []byte(`
rules:
  - name: netns-gone
    code: PodNetnsGone
    severity: warning
    kind: persistent
    sources: [{type: syslog}]
    pattern: 'nsenter: cannot open /var/run/netns/\S+'
    message: a pod's network namespace was gone when something tried to enter it
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runMeshdoctor(t, "check", "--node-only", "--host-root", root, "-o", "json", "--log-rules", rules,
		"--cni-conf-dir", "../../nodecheck/istiocni/testdata/complete/root/etc/cni/net.d")
	var rep nodecheck.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	var codes []string
	for _, f := range rep.Findings {
		codes = append(codes, string(f.Code))
	}
	// The rules file replaces the defaults: the custom code, no NsenterErrors, no istiod finding.
	// The conf dir override chains istio-cni; the binary is still missing under --host-root.
	if !slices.Equal(codes, []string{"IstioCNIIncomplete", "PodNetnsGone"}) || code != exitFindings {
		t.Errorf("exit %d, findings %v\n%s", code, codes, out)
	}

	// Logs older than --since are not read.
	out, _ = runMeshdoctor(t, "check", "--node-only", "--host-root", root, "-o", "json", "--since", "1m")
	if bytes.Contains(out, []byte("NsenterErrors")) || bytes.Contains(out, []byte("IstiodAPIServerUnreachable")) {
		t.Errorf("--since 1m read logs from 2 minutes ago:\n%s", out)
	}

	for _, bad := range [][]string{
		{"--since", "0s"},
		{"--log-rules", filepath.Join(root, "missing.yaml")},
		{"--log-rules", filepath.Join(root, "var/log/syslog")}, // not a rules file
	} {
		args := append([]string{"check", "--node-only", "--host-root", root}, bad...)
		if _, code := runMeshdoctor(t, args...); code != exitCannot {
			t.Errorf("%v: exit %d, want %d", bad, code, exitCannot)
		}
	}
}
