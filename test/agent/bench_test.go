package agent_test

import (
	"context"
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

	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// benchPods is the node size of the benchmarks: kubelet's default maximum of pods per node.
const benchPods = 110

// BenchmarkAgentFootprint measures the agent process the way the node sees it: 110 pod network
// namespaces carrying Istio's sidecar rules (written by pilot-agent in the first and copied with
// iptables-nft-restore into the others: sandboxes would only add minutes of setup, the agent's
// work per pod is the same netns read), re-verification every 60 s, and over a window
// (MESHDOCTOR_BENCH_WINDOW, default the 10m) the average CPU from /proc/PID/stat and the
// peak RSS (VmHWM), with what the RSS is made of at the end (anonymous memory, pages of the
// binary and other files, the Go heap in use). With MESHDOCTOR_BENCH_BASELINE set to another
// meshdoctor binary, that one runs beside it over the same namespaces in the same window, and
// the log gives the ratios. Then detection latency: a rule removed at a random point of the
// period until meshdoctor_pods{verdict="broken"} changes. Run with `make bench` (or
// go test -run '^$' -bench AgentFootprint ./test/agent/).
func BenchmarkAgentFootprint(b *testing.B) {
	testbed.RequirePrivileged(b)
	window := benchDuration(b, "MESHDOCTOR_BENCH_WINDOW", 10*time.Minute)
	ctx := context.Background()
	first := testbed.NewNetns(b)
	if err := first.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		b.Fatal(err)
	}
	saved, err := exec.Command("nsenter", "--net="+first.Path(), "iptables-nft-save").Output()
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"agent", "--kubeconfig=none", "--recheck-interval", "60s", "--node-backend", "none",
		"--node-name", "bench-node", "--host-root", b.TempDir(), "--netns", first.Path()}
	paths := []string{first.Path()}
	for range benchPods - 1 {
		n := testbed.NewNetns(b)
		cmd := exec.Command("nsenter", "--net="+n.Path(), "iptables-nft-restore")
		cmd.Stdin = strings.NewReader(string(saved))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("iptables-nft-restore: %v\n%s", err, out)
		}
		args = append(args, "--netns", n.Path())
		paths = append(paths, n.Path())
	}
	agents := []*benchAgent{startBenchAgent(b, "meshdoctor", binary, args...)}
	if baseline := os.Getenv("MESHDOCTOR_BENCH_BASELINE"); baseline != "" {
		agents = append(agents, startBenchAgent(b, "baseline", baseline, args...))
	}
	for _, a := range agents {
		a.waitReady(b, 2*time.Minute)
	}
	b.ResetTimer()
	for range b.N {
		use := measureWindow(b, agents, window, fmt.Sprintf("%d pods, re-verify every 60s", benchPods))
		if len(use) == 2 {
			b.Logf("meshdoctor / baseline: CPU %.2f×, peak RSS %.2f×", use[0].millicores/use[1].millicores, use[0].peakMiB/use[1].peakMiB)
		}
	}
	b.StopTimer()
	// Detection latency with the period of this run (60 s): remove a jump, time the metric.
	victim := paths[benchPods/2]
	if out, err := exec.Command("nsenter", "--net="+victim, "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	start := time.Now()
	took := make([]time.Duration, len(agents))
	waitB(b, 3*time.Minute, func() bool {
		done := true
		for i, a := range agents {
			if took[i] == 0 {
				if v, _ := a.metric(`meshdoctor_pods{verdict="broken"}`); v == 1 {
					took[i] = time.Since(start)
				} else {
					done = false
				}
			}
		}
		return done
	})
	for i, a := range agents {
		b.Logf("%s: detection latency, periodic re-verify (60 s period): %s", a.name, took[i].Round(10*time.Millisecond))
		b.ReportMetric(took[i].Seconds(), a.metricPrefix()+"detect-periodic-s")
	}
}

// BenchmarkAgentTriggerLatency measures detection through the trigger path alone, on real CRI
// pod sandboxes: 110 sidecar-injected pods (istio-init writing their rules with Istio's own
// tool), an agent discovering them through containerd and subscribed to its task events, with
// the default debounce and a --recheck-interval of an hour, so that its period cannot be what
// notices. Each sample removes one pod's inbound jump (the agent does not poll: nothing
// happens), then restarts that pod's app container through CRI as kubelet restarts a crashed
// container (the task exits, the next attempt starts), and times from the restart to
// meshdoctor_pods{verdict="broken"} changing on /metrics. It then puts the jump back and
// restarts the container again, and the pod must turn ok the same way. Reports the median and
// the slowest of the samples.
func BenchmarkAgentTriggerLatency(b *testing.B) {
	const samples = 5
	node := kubelet.Start(b)
	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Minute)
	defer cancel()
	pods := runPods(b, ctx, node, "bench", benchPods, 8)
	empty := b.TempDir()
	// Without the nftables watch (TestAgentSeesNftablesChangesAtOnce measures that path): this
	// measures the runtime-event trigger.
	a := startBenchAgent(b, "meshdoctor", binary, "agent", "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "1h", "--node-backend", "none", "--node-name", "bench-node", "--state-dir", b.TempDir(),
		"--cni-conf-dir", empty, "--cni-bin-dir", empty, "--pod-log-dir", node.Containerd.PodLogDir, "--watch-nftables=false")
	a.waitReady(b, 2*time.Minute)
	// The samples start once the agent holds the subscription and every pod is ok (the sweep
	// the subscription asks for may be folded into the startup sweep: it is not waited for).
	waitB(b, 2*time.Minute, func() bool {
		if !strings.Contains(a.logs(), `"msg":"subscribed to containerd's events"`) {
			return false
		}
		v, _ := a.metric(`meshdoctor_pods{verdict="ok"}`)
		return v == benchPods
	})

	// until waits for the broken count to reach want and returns how long that took from start.
	until := func(want float64, start time.Time) time.Duration {
		b.Helper()
		for time.Since(start) < time.Minute {
			if v, ok := a.metric(`meshdoctor_pods{verdict="broken"}`); ok && v == want {
				return time.Since(start)
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.Fatalf("meshdoctor_pods{verdict=\"broken\"} not %v within a minute of the restart\n%s", want, a.logTail())
		return 0
	}
	restart := func(p *kubelet.RunningPod) time.Time {
		b.Helper()
		start := time.Now()
		if _, err := node.RestartContainer(ctx, p, "app"); err != nil {
			b.Fatal(err)
		}
		return start
	}
	jump := func(p *kubelet.RunningPod, op string) {
		b.Helper()
		args := []string{"--net=" + p.Netns, "iptables-nft", "-t", "nat", op, "PREROUTING"}
		if op == "-I" {
			args = append(args, "1")
		}
		if out, err := exec.CommandContext(ctx, "nsenter", append(args, "-p", "tcp", "-j", "ISTIO_INBOUND")...).CombinedOutput(); err != nil {
			b.Fatalf("nsenter %v: %v\n%s", args, err, out)
		}
	}

	b.ResetTimer()
	for range b.N {
		var detect, recover []time.Duration
		for i := range samples {
			victim := pods[(i*benchPods/samples+benchPods/(2*samples))%benchPods]
			jump(victim, "-D")
			time.Sleep(2 * time.Second) // nothing may notice on its own: the broken count must still be 0
			if v, _ := a.metric(`meshdoctor_pods{verdict="broken"}`); v != 0 {
				b.Fatalf("the removed rule was noticed without a trigger (broken = %v): the period is doing the work", v)
			}
			detect = append(detect, until(1, restart(victim)))
			jump(victim, "-I")
			recover = append(recover, until(0, restart(victim)))
		}
		slices.Sort(detect)
		slices.Sort(recover)
		med := func(d []time.Duration) time.Duration { return d[len(d)/2] }
		b.Logf("detection latency, trigger (container restart, debounce 1s, %d pods): median %s, slowest %s over %d samples %v; "+
			"recovery seen: median %s",
			benchPods, med(detect).Round(time.Millisecond), detect[len(detect)-1].Round(time.Millisecond), samples,
			roundAll(detect), med(recover).Round(time.Millisecond))
		b.ReportMetric(med(detect).Seconds(), "detect-trigger-s")
		b.ReportMetric(detect[len(detect)-1].Seconds(), "detect-trigger-max-s")
	}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// benchAgent is an agent process under measurement.
type benchAgent struct {
	name    string
	cmd     *exec.Cmd
	metrics string // base URL of /metrics
	logPath string
}

// startBenchAgent runs bin with args, its metrics on a free loopback port, the debug endpoint
// off, its log in a file of the benchmark's.
func startBenchAgent(b *testing.B, name, bin string, args ...string) *benchAgent {
	b.Helper()
	addr := freeAddrB(b)
	a := &benchAgent{name: name, metrics: "http://" + addr, logPath: filepath.Join(b.TempDir(), name+".log")}
	logs, err := os.Create(a.logPath)
	if err != nil {
		b.Fatal(err)
	}
	a.cmd = exec.Command(bin, append(args, "--metrics-address", addr, "--debug-address", "")...)
	a.cmd.Stdout, a.cmd.Stderr = logs, logs
	if err := a.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
		logs.Close()
		if b.Failed() {
			b.Logf("%s agent log (end):\n%s", name, a.logTail())
		}
	})
	return a
}

func (a *benchAgent) waitReady(b *testing.B, within time.Duration) {
	b.Helper()
	waitB(b, within, func() bool { c, _, _ := testbed.HTTPGet(a.metrics + "/readyz"); return c == 200 })
}

// metricPrefix names the reported metrics of the baseline apart.
func (a *benchAgent) metricPrefix() string {
	if a.name == "meshdoctor" {
		return ""
	}
	return a.name + "-"
}

// metric is one series of the agent's exposition; false when it cannot be read.
func (a *benchAgent) metric(series string) (float64, bool) {
	_, body, err := testbed.HTTPGet(a.metrics + "/metrics")
	if err != nil {
		return 0, false
	}
	return seriesValue(body, series)
}

func (a *benchAgent) logs() string {
	data, _ := os.ReadFile(a.logPath)
	return string(data)
}

func (a *benchAgent) logTail() string {
	l := a.logs()
	return l[max(0, len(l)-4000):]
}

// footprint is what the OS and the Go runtime say the agent uses.
// benchDuration reads a duration of a benchmark from the environment, def without it.
func benchDuration(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}

// measureWindow takes every agent's average CPU over window, side by side in the same window,
// and its memory at the end; it logs each one's figures after what, and reports them as the
// benchmark's metrics.
func measureWindow(b *testing.B, agents []*benchAgent, window time.Duration, what string) []footprint {
	cpu0 := make([]int64, len(agents))
	for i, a := range agents {
		cpu0[i] = cpuTicks(b, a.cmd.Process.Pid)
	}
	start := time.Now()
	time.Sleep(window)
	elapsed := time.Since(start)
	use := make([]footprint, len(agents))
	for i, a := range agents {
		use[i] = a.footprint(b, cpu0[i], elapsed)
		b.Logf("%s: %s, window %s: %.2f millicores average, peak RSS %.1f MiB, "+
			"RSS now %.1f MiB (anonymous %.1f, binary and other files %.1f; Go heap in use %.1f)",
			a.name, what, elapsed.Round(time.Second), use[i].millicores, use[i].peakMiB,
			use[i].rssMiB, use[i].anonMiB, use[i].fileMiB, use[i].heapMiB)
		b.ReportMetric(use[i].millicores, a.metricPrefix()+"millicores")
		b.ReportMetric(use[i].peakMiB, a.metricPrefix()+"peak-RSS-MiB")
	}
	return use
}

type footprint struct {
	millicores                                 float64
	peakMiB, rssMiB, anonMiB, fileMiB, heapMiB float64
}

func (a *benchAgent) footprint(b *testing.B, cpu0 int64, elapsed time.Duration) footprint {
	pid := a.cmd.Process.Pid
	mib := func(key string) float64 { return float64(statusKB(b, pid, key)) / 1024 }
	heap, _ := a.metric("go_memstats_heap_inuse_bytes")
	return footprint{
		millicores: float64(cpuTicks(b, pid)-cpu0) / 100 / elapsed.Seconds() * 1000, // USER_HZ = 100
		peakMiB:    mib("VmHWM"), rssMiB: mib("VmRSS"), anonMiB: mib("RssAnon"), fileMiB: mib("RssFile"),
		heapMiB: heap / (1 << 20),
	}
}

func freeAddrB(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitB(b *testing.B, timeout time.Duration, f func() bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("not within %s", timeout)
}

// cpuTicks is utime+stime of the process in clock ticks (/proc/PID/stat fields 14 and 15).
func cpuTicks(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return u + st
}

func statusKB(b *testing.B, pid int, key string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
