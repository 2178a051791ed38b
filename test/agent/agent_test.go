// Package agent_test runs the real `meshdoctor agent` binary on the real test bed: pod network
// namespaces whose rules Istio's own pilot-agent wrote, containerd's CRI sandboxes, a real
// kube-apiserver over etcd, and Debian's Chromium for the debug page. Each test breaks capture
// the way nodes break it and watches the agent's metrics, annotations and events follow.
package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// binary is the meshdoctor under test: $MESHDOCTOR_BIN (make test sets it), else built here.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	path, cleanup, err := testbed.BuildMeshdoctor()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", "agent e2e", err)
		os.Exit(2)
	}
	binary = path
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// agentProc is a running agent.
type agentProc struct {
	*testbed.Process
	metrics string // base URL of the metrics port
	debug   string // base URL of the debug endpoint
}

// Logs is what the agent logged so far.
func (a *agentProc) Logs() string { return a.Output() }

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startAgent runs the agent with args plus its listen addresses, and waits for /readyz.
func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	maddr, daddr := freeAddr(t), freeAddr(t)
	hostRoot := t.TempDir()
	for _, d := range []string{"etc/cni/net.d", "opt/cni/bin", "var/log/pods"} {
		if err := os.MkdirAll(filepath.Join(hostRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The node checks read an empty node (no CNI config, no logs); pods are where the args say.
	all := append([]string{"agent", "--metrics-address", maddr, "--debug-address", daddr,
		"--node-backend", "none", "--node-name", "test-node", "--state-dir", t.TempDir(),
		"--cni-conf-dir", filepath.Join(hostRoot, "etc/cni/net.d"), "--cni-bin-dir", filepath.Join(hostRoot, "opt/cni/bin"),
		"--pod-log-dir", filepath.Join(hostRoot, "var/log/pods")}, args...)
	a := &agentProc{Process: testbed.StartProcess(t, binary, all...), metrics: "http://" + maddr, debug: "http://" + daddr}
	testbed.Eventually(t, 30*time.Second, "agent ready", func() error {
		code, body, err := testbed.HTTPGet(a.metrics + "/readyz")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("readyz %d: %s", code, body)
		}
		return nil
	})
	return a
}

// stop sends SIGTERM and checks that the agent exits 0 within the DaemonSet's grace period.
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	t.Logf("agent stopped %s after SIGTERM", a.Stop(t).Round(time.Millisecond))
}

// metric returns the value of a series of the exposition, e.g. `meshdoctor_pods{verdict="broken"}`,
// summed over the labels it does not name (see seriesValue); -1 when the agent does not expose it.
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	_, body, err := testbed.HTTPGet(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	v, ok := seriesValue(body, series)
	if !ok {
		return -1
	}
	return v
}

// seriesValue is the sum of the series of an exposition that have the selector's name and carry
// its labels, as PromQL's sum(name{l="v"}): a test names the labels it is about and keeps working
// when a metric gains one (meshdoctor_pods gained capture and mode). False when none matches.
func seriesValue(exposition, selector string) (float64, bool) {
	name, want := splitSeries(selector)
	var sum float64
	found := false
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		series, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(series, "#") {
			continue
		}
		n, labels := splitSeries(series)
		if n != name || slices.ContainsFunc(want, func(l string) bool { return !slices.Contains(labels, l) }) {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return 0, false
		}
		sum, found = sum+v, true
	}
	return sum, found
}

// splitSeries splits `name{a="1",b="2"}` into its name and its labels (`a="1"`, `b="2"`).
func splitSeries(s string) (string, []string) {
	name, rest, ok := strings.Cut(s, "{")
	if !ok {
		return s, nil
	}
	rest = strings.TrimSuffix(rest, "}")
	if rest == "" {
		return name, nil
	}
	labels := strings.Split(rest, `",`)
	for i := range labels[:len(labels)-1] {
		labels[i] += `"`
	}
	return name, labels
}

func report(t *testing.T, base string) nodecheck.Report {
	t.Helper()
	_, body, err := testbed.HTTPGet(base + "/debug/report")
	if err != nil {
		t.Fatal(err)
	}
	var rep nodecheck.Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatalf("/debug/report is not the report: %v\n%s", err, body)
	}
	return rep
}

// sidecarNetns is a pod netns with Istio's sidecar rules, written by pilot-agent as istio-init does.
func sidecarNetns(t *testing.T, ctx context.Context) *testbed.Netns {
	t.Helper()
	n := testbed.NewNetns(t)
	if err := n.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	return n
}

// breakJump deletes the PREROUTING jump into Istio's inbound chain; restoreJump puts it back.
func breakJump(t *testing.T, ctx context.Context, netnsPath string) {
	t.Helper()
	nsexec(t, ctx, netnsPath, "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
}

func restoreJump(t *testing.T, ctx context.Context, netnsPath string) {
	t.Helper()
	nsexec(t, ctx, netnsPath, "iptables-nft", "-t", "nat", "-I", "PREROUTING", "1", "-p", "tcp", "-j", "ISTIO_INBOUND")
}

func nsexec(t *testing.T, ctx context.Context, netnsPath string, args ...string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netnsPath}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %s %v: %v\n%s", netnsPath, args, err, out)
	}
}

// promtool is the promtool test/setup.sh builds; "" when it is not there.
func promtool(t *testing.T) string {
	p := filepath.Join(testbed.CacheDir(), "bin", "promtool-"+testbed.PromtoolVersion)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool not built (%v): run test/setup.sh", err)
		}
		return ""
	}
	return p
}

// TestAgentWithoutAPIServer: with --kubeconfig=none the agent diagnoses, serves metrics and the
// debug endpoint, re-verifies on its period (a rule removed after start is seen), and stops on
// SIGTERM.
func TestAgentWithoutAPIServer(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	healthy, bare := sidecarNetns(t, ctx), testbed.NewNetns(t)
	a := startAgent(t, "--kubeconfig=none", "--netns", healthy.Path(), "--netns", bare.Path(), "--recheck-interval", "2s")

	rep := report(t, a.debug)
	verdicts := map[string]nodecheck.Verdict{}
	for _, p := range rep.Pods {
		verdicts[p.Netns] = p.Verdict
	}
	if verdicts[healthy.Path()] != nodecheck.VerdictOK || verdicts[bare.Path()] != nodecheck.VerdictBroken {
		t.Fatalf("verdicts %v, want %s ok and %s broken", verdicts, healthy.Path(), bare.Path())
	}
	if v := metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); v != 1 {
		t.Errorf("meshdoctor_pods{verdict=broken} = %v, want 1", v)
	}
	for _, code := range nodecheck.AllCodes() {
		if v := metric(t, a.metrics, `meshdoctor_findings{code="`+string(code)+`",severity="error"}`); v < 0 {
			t.Errorf("meshdoctor_findings for %s not initialised", code)
		}
	}
	if v := metric(t, a.metrics, `meshdoctor_findings{code="RedirectRulesMissing",severity="error"}`); v != 1 {
		t.Errorf("RedirectRulesMissing findings = %v, want 1", v)
	}
	if v := metric(t, a.metrics, `meshdoctor_last_sweep_timestamp_seconds`); v <= 0 {
		t.Errorf("meshdoctor_last_sweep_timestamp_seconds = %v", v)
	}

	// The exposition is valid for Prometheus' own linter.
	if pt := promtool(t); pt != "" {
		_, body, err := testbed.HTTPGet(a.metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, pt, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not built; exposition not linted (run test/setup.sh)")
	}

	// Per-pod detail with the raw rules.
	code, body, err := testbed.HTTPGet(a.debug + "/debug/pods/nope/nope")
	if err != nil || code != 404 {
		t.Errorf("/debug/pods of an unknown pod: %d %v", code, err)
	}
	_ = body

	// Periodic re-verification: remove a jump after the first check.
	start := time.Now()
	breakJump(t, ctx, healthy.Path())
	took := testbed.Eventually(t, 20*time.Second, "broken pod seen by the periodic re-check", func() error {
		if v := metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); v != 2 {
			return fmt.Errorf("broken = %v", v)
		}
		return nil
	})
	t.Logf("rule removed → metric changed in %s (recheck interval 2s)", took.Round(time.Millisecond))
	_ = start
	restoreJump(t, ctx, healthy.Path())
	testbed.Eventually(t, 20*time.Second, "recovery", func() error {
		if v := metric(t, a.metrics, `meshdoctor_pods{verdict="ok"}`); v != 1 {
			return fmt.Errorf("ok = %v", v)
		}
		return nil
	})
	// With the rules left alone, the re-checks are served the decoded rules from the cache (once
	// a second read has confirmed them), and the verdicts stay what they were.
	hits := metric(t, a.metrics, `meshdoctor_nftables_reads_total{served="cache"}`)
	testbed.Eventually(t, 20*time.Second, "re-checks served from the nftables cache", func() error {
		if v := metric(t, a.metrics, `meshdoctor_nftables_reads_total{served="cache"}`); v <= hits {
			return fmt.Errorf("cache reads %v, dumps %v", v, metric(t, a.metrics, `meshdoctor_nftables_reads_total{served="dump"}`))
		}
		return nil
	})
	if ok, broken := metric(t, a.metrics, `meshdoctor_pods{verdict="ok"}`), metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); ok != 1 || broken != 1 {
		t.Errorf("with re-checks served from the cache: %v ok, %v broken, want 1 and 1", ok, broken)
	}

	a.stop(t)
	// Logs are JSON lines saying what was checked and why.
	var checked int
	for _, line := range strings.Split(strings.TrimSpace(a.Logs()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		if rec["msg"] == "pod checked: verdict changed" && rec["why"] != nil {
			checked++
		}
	}
	if checked < 3 {
		t.Errorf("%d verdict-change log lines, want at least 3", checked)
	}
}

// TestDebugPageInChromium opens the HTML page in headless Chromium and keeps a screenshot.
func TestDebugPageInChromium(t *testing.T) {
	testbed.RequirePrivileged(t)
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium not installed: run test/setup.sh")
		}
		t.Skip("chromium not installed: run test/setup.sh")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	healthy, bare := sidecarNetns(t, ctx), testbed.NewNetns(t)
	a := startAgent(t, "--kubeconfig=none", "--netns", healthy.Path(), "--netns", bare.Path())
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + t.TempDir()}
	dom, err := exec.CommandContext(ctx, chromium, append(flags, "--dump-dom", a.debug+"/")...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	for _, want := range []string{"meshdoctor · node test-node", "1 broken", "1 ok", "RedirectRulesMissing", bare.Path()} {
		if !strings.Contains(string(dom), want) {
			t.Errorf("the page as Chromium renders it lacks %q", want)
		}
	}
	dir := os.Getenv("MESHDOCTOR_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "meshdoctor-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "agent-debug-page.png")
	out, err := exec.CommandContext(ctx, chromium, append(flags, "--window-size=1280,720", "--screenshot="+shot, a.debug+"/")...).CombinedOutput()
	if err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	if st, err := os.Stat(shot); err != nil || st.Size() < 1000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot of the debug page: %s", shot)
}

// TestAgentLogEvidenceResumes: istiod losing the API server, as kubelet writes its container log,
// is counted in meshdoctor_log_matches_total and shown as IstiodAPIServerUnreachable; an agent
// restarted on the same --state-dir resumes after what it read (nothing counted twice) and still
// holds the condition; a line logged after the restart is counted once.
// istiodLine is a line of istiod's losing the API server, in the CRI log format kubelet writes
// (timestamp, stream, tag, message), at the given time.
func istiodLine(at time.Time) string {
	ts := at.UTC().Format(time.RFC3339Nano)
	return ts + " stderr F " + ts + "\terror\tklog\tk8s.io/client-go@v0.21.2/tools/cache/reflector.go:167: " +
		"Failed to watch *v1.ConfigMap: failed to list *v1.ConfigMap: Get \"https://10.96.0.1:443/api/v1/configmaps\": " +
		"dial tcp 10.96.0.1:443: connect: connection refused\n"
}

// appendIstiodLine appends istiodLine(at) to a pod log file.
func appendIstiodLine(t *testing.T, logFile string, at time.Time) {
	t.Helper()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(istiodLine(at)); err != nil {
		t.Fatal(err)
	}
}

func TestAgentLogEvidenceResumes(t *testing.T) {
	testbed.RequirePrivileged(t)
	podLogs, state := t.TempDir(), t.TempDir()
	logFile := filepath.Join(podLogs, "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "discovery", "0.log")
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		t.Fatal(err)
	}
	// A line of istiod's, in the CRI log format kubelet writes (timestamp, stream, tag, message).
	appendLine := func(at time.Time) { appendIstiodLine(t, logFile, at) }
	const matches = `meshdoctor_log_matches_total{rule="istiod-apiserver-unreachable"}`
	const condition = `meshdoctor_findings{code="IstiodAPIServerUnreachable",severity="warning"}`
	appendLine(time.Now().Add(-time.Minute))
	appendLine(time.Now().Add(-50 * time.Second))
	args := []string{"--kubeconfig=none", "--netns", testbed.NewNetns(t).Path(), "--pod-log-dir", podLogs, "--state-dir", state}

	first := startAgent(t, args...)
	testbed.Eventually(t, 45*time.Second, "both lines counted", func() error {
		if v := metric(t, first.metrics, matches); v != 2 {
			return fmt.Errorf("%s = %v, want 2", matches, v)
		}
		return nil
	})
	if v := metric(t, first.metrics, condition); v != 1 {
		t.Errorf("%s = %v, want 1", condition, v)
	}
	first.stop(t)
	if _, err := os.Stat(state); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(state); len(entries) == 0 {
		t.Fatalf("--state-dir %s holds nothing after the agent stopped", state)
	}

	second := startAgent(t, args...)
	testbed.Eventually(t, 45*time.Second, "the condition restored from the state", func() error {
		if v := metric(t, second.metrics, condition); v != 1 {
			return fmt.Errorf("%s = %v, want 1", condition, v)
		}
		return nil
	})
	if v := metric(t, second.metrics, matches); v != 0 {
		t.Errorf("after the restart %s = %v: lines read before it were counted again", matches, v)
	}
	appendLine(time.Now())
	testbed.Eventually(t, 45*time.Second, "the new line counted once", func() error {
		if v := metric(t, second.metrics, matches); v != 1 {
			return fmt.Errorf("%s = %v, want 1", matches, v)
		}
		return nil
	})
}
