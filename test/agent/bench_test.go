package agent_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// BenchmarkAgentFootprint measures the agent process the way the node sees it: 110 pod network
// namespaces carrying Istio's sidecar rules (written by pilot-agent in the first and copied with
// iptables-nft-restore into the others: sandboxes would only add minutes of setup, the agent's
// work per pod is the same netns read), re-verification every 60 s, and over a window
// (MESHDOCTOR_BENCH_WINDOW, default the 10m) the average CPU from /proc/PID/stat and the
// peak RSS (VmHWM). Then detection latency: a rule removed at a random point of the period until
// meshdoctor_pods{verdict="broken"} changes. Run with `make bench` (or
// go test -run '^$' -bench AgentFootprint ./test/agent/).
func BenchmarkAgentFootprint(b *testing.B) {
	testbed.RequirePrivileged(b)
	window := 10 * time.Minute
	if w := os.Getenv("MESHDOCTOR_BENCH_WINDOW"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil {
			b.Fatal(err)
		}
		window = d
	}
	const pods = 110
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
		"--node-name", "bench-node", "--host-root", b.TempDir(), "--metrics-address", "127.0.0.1:0",
		"--netns", first.Path()}
	paths := []string{first.Path()}
	for range pods - 1 {
		n := testbed.NewNetns(b)
		cmd := exec.Command("nsenter", "--net="+n.Path(), "iptables-nft-restore")
		cmd.Stdin = strings.NewReader(string(saved))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("iptables-nft-restore: %v\n%s", err, out)
		}
		args = append(args, "--netns", n.Path())
		paths = append(paths, n.Path())
	}
	maddr := freeAddrB(b)
	for i, a := range args {
		if a == "127.0.0.1:0" {
			args[i] = maddr
		}
	}
	args = append(args, "--debug-address", "")
	cmd := exec.Command(binary, args...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	base := "http://" + maddr
	waitB(b, 2*time.Minute, func() bool { c, _, _ := get(base + "/readyz"); return c == 200 })
	b.ResetTimer()
	for range b.N {
		cpu0 := cpuTicks(b, cmd.Process.Pid)
		start := time.Now()
		time.Sleep(window)
		cpu1 := cpuTicks(b, cmd.Process.Pid)
		elapsed := time.Since(start)
		millicores := float64(cpu1-cpu0) / 100 / elapsed.Seconds() * 1000 // USER_HZ = 100
		hwm := statusKB(b, cmd.Process.Pid, "VmHWM")
		rss := statusKB(b, cmd.Process.Pid, "VmRSS")
		b.ReportMetric(millicores, "millicores")
		b.ReportMetric(float64(hwm)/1024, "peak-RSS-MiB")
		b.Logf("%d pods, re-verify every 60s, window %s: %.2f millicores average, peak RSS %.1f MiB, RSS now %.1f MiB",
			pods, elapsed.Round(time.Second), millicores, float64(hwm)/1024, float64(rss)/1024)
	}
	b.StopTimer()
	// Detection latency with the default period of this run (60 s): remove a jump, time the metric.
	victim := paths[pods/2]
	if out, err := exec.Command("nsenter", "--net="+victim, "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	start := time.Now()
	waitB(b, 3*time.Minute, func() bool {
		_, body, err := get(base + "/metrics")
		return err == nil && strings.Contains(body, `meshdoctor_pods{verdict="broken"} 1`)
	})
	b.Logf("detection latency, periodic re-verify (60 s period): %s", time.Since(start).Round(10*time.Millisecond))
	b.ReportMetric(time.Since(start).Seconds(), "detect-periodic-s")
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
