package logscan

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// istioCNIPlugin returns the real istio-cni plugin test/setup.sh builds; without it the test
// skips locally and fails in CI.
func istioCNIPlugin(t *testing.T) string {
	t.Helper()
	path := filepath.Join(testbed.CacheDir(), "bin", "istio-cni")
	if _, err := os.Stat(path); err != nil {
		msg := fmt.Sprintf("the istio-cni plugin is not built (%v); run test/setup.sh", err)
		if inCI() {
			t.Fatal(msg + " (CI=true: tests on real binaries must run)")
		}
		t.Skip(msg)
	}
	return path
}

// TestRealIstioCNIFailure runs the real istio-cni plugin as the container runtime does for a pod
// sandbox, in a node where its kubeconfig is missing. What it logs goes into istio-cni-node's
// container log as the node agent relays it; the error it returns goes into containerd's journal
// line. The scan must report both, and name the pod from containerd's line. Then the real nsenter
// fails in the same node's syslog.
func TestRealIstioCNIFailure(t *testing.T) {
	plugin := istioCNIPlugin(t)
	runDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"istio-cni","cni_agent_run_dir":%q,"plugin_log_level":"info","pod_namespace":"istio-system","ambient_enabled":false}`, runDir)
	const sandbox = "4292f2321caaf689b54dcc5b90250d20026864fc9c3e08754fa1cbbf4403db02"
	cmd := exec.Command(plugin)
	cmd.Stdin = strings.NewReader(conf)
	cmd.Env = []string{
		"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + sandbox, "CNI_NETNS=/var/run/netns/cni-gone", "CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin", "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9;K8S_POD_INFRA_CONTAINER_ID=" + sandbox,
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err == nil {
		t.Fatal("the plugin succeeded without a kubeconfig: the test is not testing")
	}
	var result struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &result); err != nil || result.Msg == "" {
		t.Fatalf("plugin result %q: %v", stdout.Bytes(), err)
	}

	root := t.TempDir()
	now := time.Now()
	pluginLog := filepath.Join(t.TempDir(), "plugin.stderr")
	must(t, os.WriteFile(pluginLog, stderr.Bytes(), 0o600))
	log := openContainerLog(t, filepath.Join(root, "var/log/pods/istio-system_istio-cni-node-x7k2p_6a1e2f3d-4c5b-4a69-8e7f-9d0c1b2a3f4e/install-cni/0.log"))
	for _, l := range relayPluginLog(t, pluginLog) {
		log.write(l.Time, l.Stream, l.Message)
	}
	// containerd 1.6 logs the failed RunPodSandbox with the plugin's error as libcni wraps it.
	q := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `"`, `\"`) }
	cniErr := fmt.Sprintf("failed to setup network for sandbox %q: plugin type=%q name=%q failed (add): %s", sandbox, "istio-cni", "istio-cni", result.Msg)
	writeJournal(t, filepath.Join(root, "var/log/journal/m/system.journal"), []journalIn{{
		Time: now, Unit: "containerd.service", Identifier: "containerd",
		Message: fmt.Sprintf(`time="%s" level=error msg="RunPodSandbox for &PodSandboxMetadata{Name:cart-7d9,Uid:0b7c2a1e-3f7d-4c55-9d0e-2c6f1f0a9b11,Namespace:shop,Attempt:0,} failed, error" error="%s"`,
			now.UTC().Format(time.RFC3339Nano), q(cniErr)),
	}}, true)
	nsenter := requireTool(t, "nsenter")
	out, err := exec.Command(nsenter, "--net=/var/run/netns/cni-gone-"+fmt.Sprint(os.Getpid()), "--", "true").CombinedOutput()
	if err == nil {
		t.Fatal("nsenter into a missing namespace succeeded")
	}
	syslog := filepath.Join(root, "var/log/syslog")
	must(t, os.WriteFile(syslog, []byte(fmt.Sprintf("%s node-1 netns-probe[42]: %s\n", now.Format(traditionalStamp), strings.TrimSpace(string(out)))), 0o640))

	rules, err := DefaultRules()
	must(t, err)
	s, err := New(Config{
		PodLogDir:   filepath.Join(root, "var/log/pods"),
		JournalDirs: []string{filepath.Join(root, "var/log/journal")},
		SyslogFiles: []string{syslog},
		Rules:       rules, Since: time.Hour,
		Now: func() time.Time { return now.Add(time.Minute) },
	})
	must(t, err)
	defer s.Close()
	if _, err := s.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	byRule := map[string]nodecheck.Finding{}
	for _, f := range s.Findings(now.Add(time.Minute)) {
		byRule[f.Evidence["rule"].(string)] = f
	}
	for _, rule := range []string{"istio-cni-errors", "istio-cni-sandbox-failed", "nsenter-errors"} {
		if _, ok := byRule[rule]; !ok {
			t.Errorf("no finding from %s; the real lines were:\nplugin: %s\nresult: %s\nnsenter: %s", rule, stderr.Bytes(), result.Msg, out)
		}
	}
	if f, ok := byRule["istio-cni-sandbox-failed"]; ok {
		pods, _ := f.Evidence["pods"].([]map[string]any)
		if len(pods) != 1 || pods[0]["pod"] != "shop/cart-7d9" {
			t.Errorf("the sandbox failure should name shop/cart-7d9, got %v", f.Evidence["pods"])
		}
	}
}
