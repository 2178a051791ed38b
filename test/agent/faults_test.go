package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// faultRecord is one row of docs/reliability.md's fault table: the fault, what the agent did,
// what it reported, what it lost, with the figures measured. The tests print it on a line of its
// own (FAULT-REPORT {json}) for test/cmd/fault-report, which `make fault-report` runs.
type faultRecord struct {
	Fault    string `json:"fault"`
	Did      string `json:"did"`
	Reported string `json:"reported"`
	Lost     string `json:"lost"`
	Test     string `json:"test"`
}

func reportFault(t *testing.T, r faultRecord) {
	t.Helper()
	r.Test = t.Name()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FAULT-REPORT %s", b)
}

// alive fails the test when the agent's process has exited or its /healthz does not answer 200.
func alive(t *testing.T, a *agentProc) {
	t.Helper()
	code, body, err := testbed.HTTPGet(a.metrics + "/healthz")
	if err != nil || code != 200 {
		t.Fatalf("the agent is not alive: %d %s %v\n%s", code, body, err, a.Logs())
	}
	if strings.Contains(a.Logs(), "panic:") || strings.Contains(a.Logs(), "goroutine ") {
		t.Fatalf("the agent panicked:\n%s", a.Logs())
	}
}

func podVerdicts(t *testing.T, a *agentProc) map[string]nodecheck.Verdict {
	t.Helper()
	out := map[string]nodecheck.Verdict{}
	for _, p := range report(t, a.debug).Pods {
		out[p.Name] = p.Verdict
	}
	return out
}

// TestFaultContainerdRestart: containerd is killed (SIGKILL, as a crash; the pods' shims keep
// running) and started again twice under a running agent, a pod made right after each restart
// while the agent is still resubscribing. Every pod, made before or after, is reported; the
// event stream is resubscribed within seconds, so the pods made after are checked from their
// events, not from the hour-long period.
func TestFaultContainerdRestart(t *testing.T) {
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	if _, err := node.RunPod(ctx, kubelet.InjectedPod("shop", "before")); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "1h", "--debounce", "200ms")
	const resubscribed = `"msg":"subscribed to containerd's events"`
	testbed.Eventually(t, time.Minute, "subscribed to containerd's events", func() error {
		if strings.Count(a.Logs(), resubscribed) < 1 {
			return errors.New("not yet")
		}
		return nil
	})
	okPods := func(want ...string) func() error {
		return func() error {
			v := podVerdicts(t, a)
			for _, name := range want {
				if v[name] != nodecheck.VerdictOK {
					return fmt.Errorf("verdicts %v", v)
				}
			}
			return nil
		}
	}
	testbed.Eventually(t, 30*time.Second, "the pod made before ok", okPods("before"))

	var restartTook, resubTook, checkedTook []time.Duration
	want := []string{"before"}
	for i := 1; i <= 2; i++ {
		subs := strings.Count(a.Logs(), resubscribed)
		start := time.Now()
		if err := node.Containerd.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		restartTook = append(restartTook, time.Since(start))
		ready := time.Now()
		name := fmt.Sprintf("after-restart-%d", i)
		if _, err := node.RunPod(ctx, kubelet.InjectedPod("shop", name)); err != nil {
			t.Fatal(err)
		}
		testbed.Eventually(t, 30*time.Second, "resubscribed", func() error {
			if strings.Count(a.Logs(), resubscribed) <= subs {
				return errors.New("not yet")
			}
			return nil
		})
		// From the daemon serving again to the agent's log line, by the line's own time stamp
		// (the pod was being made meanwhile).
		resubTook = append(resubTook, logTime(t, a.Logs(), resubscribed, subs).Sub(ready).Round(time.Millisecond))
		want = append(want, name)
		testbed.Eventually(t, 30*time.Second, name+" checked", okPods(want...))
		checkedTook = append(checkedTook, time.Since(ready))
		alive(t, a)
	}
	if got := len(report(t, a.debug).Pods); got != len(want) {
		t.Errorf("%d pods reported, want %d (%v)", got, len(want), want)
	}
	a.stop(t)
	reportFault(t, faultRecord{
		Fault: "containerd killed (SIGKILL) and restarted, twice, a pod made right after each restart",
		Did: fmt.Sprintf("resubscribed to containerd's events (with a sweep of the node) %v after the daemon served again (restart took %v)",
			roundAll(resubTook), roundAll(restartTook)),
		Reported: fmt.Sprintf("all %d pods ok: the one made before and each made after a restart (checked %v after it, period 1 h)",
			len(want), roundAll(checkedTook)),
		Lost: "nothing: no pod missed, no crash (/healthz 200 throughout)",
	})
}

// logTime is the time stamp of the agent's JSON log line holding needle, the n-th (from 0).
func logTime(t *testing.T, logs, needle string, n int) time.Time {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, needle) {
			continue
		}
		if n > 0 {
			n--
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		return rec.Time
	}
	t.Fatalf("no log line %q", needle)
	return time.Time{}
}

// fillTmpfs mounts a tmpfs of size bytes at dir (unmounted when the test ends) and fills it.
func fillTmpfs(t *testing.T, dir string, size int) string {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mounting a tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{'x'}, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return filler
		}
	}
}

// TestFaultStateDirFullThenReadOnly: the agent's --state-dir is a full tmpfs, then has room (the
// state is saved again), then is remounted read-only. Log evidence is found, counted once and
// reported throughout; each failure to save is said once, not at every pass.
func TestFaultStateDirFullThenReadOnly(t *testing.T) {
	testbed.RequirePrivileged(t)
	podLogs, state := t.TempDir(), t.TempDir()
	filler := fillTmpfs(t, state, 64<<10)
	logFile := filepath.Join(podLogs, "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "discovery", "0.log")
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		t.Fatal(err)
	}
	appendLine := func() { appendIstiodLine(t, logFile, time.Now()) }
	const matches = `meshdoctor_log_matches_total{rule="istiod-apiserver-unreachable"}`
	const condition = `meshdoctor_findings{code="IstiodAPIServerUnreachable",severity="warning"}`
	const cannotSave = "log scan state cannot be saved"
	appendLine()
	a := startAgent(t, "--kubeconfig=none", "--netns", testbed.NewNetns(t).Path(), "--pod-log-dir", podLogs,
		"--state-dir", state, "--node-check-interval", "500ms")
	counted := func(n float64) func() error {
		return func() error {
			if v := metric(t, a.metrics, matches); v != n {
				return fmt.Errorf("%s = %v, want %v", matches, v, n)
			}
			if v := metric(t, a.metrics, condition); v != 1 {
				return fmt.Errorf("%s = %v, want 1", condition, v)
			}
			return nil
		}
	}
	testbed.Eventually(t, 30*time.Second, "the line counted with the state dir full", counted(1))
	time.Sleep(2 * time.Second) // four more passes, each failing to save
	appendLine()
	testbed.Eventually(t, 10*time.Second, "a new line counted once (offsets kept in memory)", counted(2))
	if n := strings.Count(a.Logs(), cannotSave); n != 1 {
		t.Errorf("%d warnings %q over several passes, want 1:\n%s", n, cannotSave, a.Logs())
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "the state saved again", func() error {
		if !strings.Contains(a.Logs(), "log scan state saved again") {
			return errors.New("not yet")
		}
		if entries, _ := os.ReadDir(state); len(entries) == 0 {
			return errors.New("nothing in the state dir")
		}
		return nil
	})

	if err := syscall.Mount("", state, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	appendLine()
	testbed.Eventually(t, 10*time.Second, "a line counted with the state dir read-only", counted(3))
	time.Sleep(2 * time.Second)
	if n := strings.Count(a.Logs(), cannotSave); n != 2 {
		t.Errorf("%d warnings %q, want 2 (full, then read-only after it had recovered)", n, cannotSave)
	}
	alive(t, a)
	a.stop(t)
	reportFault(t, faultRecord{
		Fault:    "--state-dir full (a 64 KiB tmpfs filled), then with room, then remounted read-only",
		Did:      "kept log offsets and conditions in memory; one warning when saving starts failing, one info when it works again",
		Reported: "every log match counted exactly once (3 lines, 3 matches) and the IstiodAPIServerUnreachable condition throughout",
		Lost:     "nothing while running; a restart while the dir is unusable re-reads the look-back (--since)",
	})
}

// TestFaultLogJunk: the node's logs hold what a real node can: a pod log path that became a
// directory, a 10 MiB line, binary junk, a truncated journal file. The scan goes on: a matching
// line after the junk is found, once, and the unreadable parts are said, not fatal.
func TestFaultLogJunk(t *testing.T) {
	testbed.RequirePrivileged(t)
	root := t.TempDir()
	podLogs, journal := filepath.Join(root, "var/log/pods"), filepath.Join(root, "var/log/journal")
	pod := filepath.Join(podLogs, "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "discovery")
	if err := os.MkdirAll(filepath.Join(pod, "1.log"), 0o755); err != nil { // a log path that is a directory
		t.Fatal(err)
	}
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	var junk bytes.Buffer
	junk.WriteString(ts + " stderr F " + strings.Repeat("A", 10<<20) + "\n") // a 10 MiB line
	for i := range 4096 {
		junk.WriteByte(byte(i*131 + 7)) // binary junk, NULs and newlines included
	}
	junk.WriteString("\n" + istiodLine(time.Now()))
	if err := os.WriteFile(filepath.Join(pod, "0.log"), junk.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// A journal file cut short, as after a crash: the header of a real one, and nothing more.
	machine := filepath.Join(journal, "0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(machine, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(machine, "system.journal"), append([]byte("LPKSHHRH"), make([]byte, 100)...), 0o640); err != nil {
		t.Fatal(err)
	}
	const matches = `meshdoctor_log_matches_total{rule="istiod-apiserver-unreachable"}`
	a := startAgent(t, "--kubeconfig=none", "--netns", testbed.NewNetns(t).Path(), "--pod-log-dir", podLogs,
		"--host-root", root, "--node-check-interval", "500ms")
	testbed.Eventually(t, 30*time.Second, "the line after the junk counted", func() error {
		if v := metric(t, a.metrics, matches); v != 1 {
			return fmt.Errorf("%s = %v, want 1", matches, v)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // more passes: still once
	if v := metric(t, a.metrics, matches); v != 1 {
		t.Errorf("%s = %v after more passes, want 1", matches, v)
	}
	alive(t, a)
	_, body, err := testbed.HTTPGet(a.debug + "/debug/node")
	if err != nil {
		t.Fatal(err)
	}
	var node struct {
		Details struct {
			Logs struct {
				Errors []string `json:"errors"`
			} `json:"logs"`
		} `json:"details"`
	}
	if err := json.Unmarshal([]byte(body), &node); err != nil {
		t.Fatal(err)
	}
	stats := node.Details.Logs
	if !slices.ContainsFunc(stats.Errors, func(e string) bool { return strings.Contains(e, "system.journal") }) {
		t.Errorf("the truncated journal file is not said: %+v", stats)
	}
	logs := a.Logs()
	a.stop(t)
	reportFault(t, faultRecord{
		Fault: "pod log junk: a log path that is a directory, a 10 MiB line, 4 KiB of binary junk; a journal file truncated after its header",
		Did: fmt.Sprintf("read on past the junk; said the journal file cannot be read, in the scan's errors on /debug/node%s",
			said(logs, "system.journal")),
		Reported: "the matching line after the junk, counted once over many passes",
		Lost:     "nothing readable: only the unreadable parts",
	})
}

// said is " (logged)" when the agent's logs mention what.
func said(logs, what string) string {
	if strings.Contains(logs, what) {
		return " (logged)"
	}
	return ""
}

// TestFaultCNIConfDirRemoved: the CNI config directory is deleted and made again under a running
// agent. The watch records both, the istio-cni check says what it can, and nothing stops.
func TestFaultCNIConfDirRemoved(t *testing.T) {
	testbed.RequirePrivileged(t)
	confDir := filepath.Join(t.TempDir(), "net.d")
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	const fixtures = "../../nodecheck/istiocni/testdata"
	copyConf(t, fixtures+"/complete/root/etc/cni/net.d/10-containerd-net.conflist", confDir, "10-containerd-net.conflist")
	a := startAgent(t, "--kubeconfig=none", "--netns", testbed.NewNetns(t).Path(), "--cni-conf-dir", confDir)
	events := func(want ...cnichain.Event) func() error {
		return func() error {
			var got []cnichain.Event
			for _, c := range nodeTimeline(t, a.debug) {
				if c.Source == cnichain.SourceInotify {
					got = append(got, c.Event)
				}
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("timeline events %v, want %v", got, want)
			}
			return nil
		}
	}
	testbed.Eventually(t, 30*time.Second, "the watch started", events(cnichain.EventWatchStarted))
	if err := os.RemoveAll(confDir); err != nil {
		t.Fatal(err)
	}
	removed := testbed.Eventually(t, 10*time.Second, "the removal recorded", events(cnichain.EventWatchStarted, cnichain.EventDirRemoved))
	runs := func() string {
		_, body, _ := testbed.HTTPGet(a.debug + "/debug/node")
		return body
	}
	testbed.Eventually(t, 10*time.Second, "the istio-cni check says the directory is missing", func() error {
		if !strings.Contains(runs(), "does not exist") {
			return errors.New("not yet")
		}
		return nil
	})
	alive(t, a)
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyConf(t, fixtures+"/complete/root/etc/cni/net.d/10-containerd-net.conflist", confDir, "10-containerd-net.conflist")
	back := testbed.Eventually(t, 15*time.Second, "the directory back and chained", func() error {
		tl := nodeTimeline(t, a.debug)
		if len(tl) == 0 || tl[len(tl)-1].Chain != cnichain.Chained {
			return fmt.Errorf("timeline %+v", tl)
		}
		return nil
	})
	alive(t, a)
	a.stop(t)
	reportFault(t, faultRecord{
		Fault: "the CNI config directory deleted, then made again with istio-cni's chained config",
		Did: fmt.Sprintf("recorded the removal on the chain's timeline in %v, looked for the directory every 2 s, "+
			"watched it again once back (chained again on /debug/node %v after it was made)", removed.Round(time.Millisecond), back.Round(time.Millisecond)),
		Reported: "the istio-cni check's error (the directory does not exist) while it was gone; the chained install once back",
		Lost:     "nothing: the timeline keeps both changes; no pod was networked meanwhile (the runtime cannot without a config)",
	})
}

// TestFaultAPIServerFlapping: the API server goes down and comes back every 10 s for 2 minutes
// while a pod's capture breaks, recovers and breaks again. The agent keeps diagnosing from the
// runtime; once the API server stays up the annotations converge to the pod's last state without
// a restart, and the patches that reached it are at most one per change of the pod's verdict.
func TestFaultAPIServerFlapping(t *testing.T) {
	api := testbed.StartAPIServer(t)
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	netns := apiPods(t, ctx, kc, node, "cart", "pay")
	a := startAgent(t, "--kubeconfig", api.Kubeconfig, "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "3s", "--debounce", "200ms")
	verdict := func(name string) string {
		p, err := kc.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "(" + err.Error() + ")"
		}
		return p.Annotations["meshdoctor.io/verdict"]
	}
	converged := func(want map[string]string) func() error {
		return func() error {
			for name, v := range want {
				if got := verdict(name); got != v {
					return fmt.Errorf("%s annotated %q, want %q", name, got, v)
				}
			}
			return nil
		}
	}
	testbed.Eventually(t, time.Minute, "both pods annotated ok", converged(map[string]string{"cart": "ok", "pay": "ok"}))
	patches := func() int {
		writes, err := api.Writes("meshdoctor-agent")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, w := range writes {
			if w.Verb == "patch" && w.ObjectRef.Resource == "pods" && w.ObjectRef.Name == "cart" {
				n++
			}
		}
		return n
	}
	before := patches()
	var seen []time.Duration

	// Flapping: down 10 s, up 10 s, for 2 minutes; cart's capture changes three times meanwhile.
	// Each change must show on /metrics while the API server is down: diagnosis never waits for it.
	broken := func(n float64) func() error {
		return func() error {
			if v := metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); v != n {
				return fmt.Errorf("broken = %v, want %v", v, n)
			}
			return nil
		}
	}
	changes := map[int]func(){
		1: func() {
			breakJump(t, ctx, netns["cart"])
			seen = append(seen, testbed.Eventually(t, 10*time.Second, "broken while down", broken(1)))
		},
		3: func() {
			restoreJump(t, ctx, netns["cart"])
			seen = append(seen, testbed.Eventually(t, 10*time.Second, "ok while down", broken(0)))
		},
		5: func() {
			breakJump(t, ctx, netns["cart"])
			seen = append(seen, testbed.Eventually(t, 10*time.Second, "broken while down", broken(1)))
		},
	}
	flapStart := time.Now()
	downs := 0
	for i := 0; time.Since(flapStart) < 2*time.Minute; i++ {
		if err := api.Stop(); err != nil {
			t.Fatal(err)
		}
		downs++
		down := time.Now()
		if change, ok := changes[i]; ok {
			change()
		}
		time.Sleep(10*time.Second - time.Since(down))
		if err := api.Start(ctx); err != nil {
			t.Fatal(err)
		}
		alive(t, a)
		time.Sleep(10 * time.Second)
	}
	flapped := time.Since(flapStart).Round(time.Second)
	took := testbed.Eventually(t, 2*time.Minute, "annotations converged after the flapping",
		converged(map[string]string{"cart": "broken", "pay": "ok"}))
	if v := metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); v != 1 {
		t.Errorf("meshdoctor_pods{verdict=broken} = %v, want 1", v)
	}
	time.Sleep(7 * time.Second) // re-checks: no more writes once converged
	n := patches() - before
	if n > len(changes) {
		t.Errorf("%d patches of cart reached the API server for %d changes of its verdict", n, len(changes))
	}
	alive(t, a)
	a.stop(t)
	reportFault(t, faultRecord{
		Fault: fmt.Sprintf("API server down and up every 10 s for %s (%d outages), a pod's capture broken, restored, broken meanwhile",
			flapped, downs),
		Did: fmt.Sprintf("kept diagnosing from the runtime: each change on /metrics %v after it, the API server down (re-check 3 s)",
			roundAll(seen)),
		Reported: fmt.Sprintf("annotations converged to the last state, seen %s after the flapping ended (its last 10 s up)", took.Round(time.Millisecond)),
		Lost:     fmt.Sprintf("nothing: %d patches of the pod reached the API server for %d changes (at most one per change), no crash", n, len(changes)),
	})
}
