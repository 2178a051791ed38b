package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// BenchmarkAgentFootprintCRI measures the agent the way a real node runs it (issue 15): 110 real
// CRI pod sandboxes injected as Istio does (istio-init writing the rules with pilot-agent, a
// proxy answering 15020, an app running), found through containerd, subscribed to its events
// and to each pod's nftables changes, re-verified every 60 s with the 15020 probe, the start
// order and the pods' logs. After a warm-up (MESHDOCTOR_BENCH_WARMUP, default 1m) it takes the
// average CPU from /proc/PID/stat and the peak RSS over a window (MESHDOCTOR_BENCH_WINDOW,
// default 3m). Beside it, in the same window and over the same pods' netns, runs the agent over
// bare --netns targets (the shape of BenchmarkAgentFootprint, which skips discovery, the probe,
// start order and logs): the ratio is what a real node's work costs on top of the rule read.
// With MESHDOCTOR_BENCH_BASELINE set to another meshdoctor binary, that build runs the same
// real-node configuration beside them.
func BenchmarkAgentFootprintCRI(b *testing.B) {
	warmup := benchDuration(b, "MESHDOCTOR_BENCH_WARMUP", time.Minute)
	window := benchDuration(b, "MESHDOCTOR_BENCH_WINDOW", 3*time.Minute)
	node := kubelet.Start(b)
	ctx, cancel := context.WithTimeout(b.Context(), warmup+window+20*time.Minute)
	defer cancel()
	pods := runPods(b, ctx, node, "bench", benchPods, 8)
	empty := b.TempDir()
	// With MESHDOCTOR_BENCH_PROFILE_DIR, the agent under test writes its CPU profile of the whole
	// run and its heap profile there when it is stopped at the end (go tool pprof -top FILE).
	profileDir := os.Getenv("MESHDOCTOR_BENCH_PROFILE_DIR")
	var profile []string
	if profileDir != "" {
		profile = []string{"--cpu-profile", filepath.Join(profileDir, "agent-cpu.pprof"),
			"--heap-profile", filepath.Join(profileDir, "agent-heap.pprof")}
	}
	real := func(bin, name string, extra ...string) *benchAgent {
		return startBenchAgent(b, name, bin, append(extra, "agent", "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
			"--recheck-interval", "60s", "--node-backend", "none", "--node-name", "bench-node", "--state-dir", b.TempDir(),
			"--cni-conf-dir", empty, "--cni-bin-dir", empty, "--pod-log-dir", node.Containerd.PodLogDir)...)
	}
	bare := []string{"agent", "--kubeconfig=none", "--recheck-interval", "60s", "--node-backend", "none",
		"--node-name", "bench-node", "--host-root", b.TempDir(), "--state-dir", b.TempDir()}
	for _, p := range pods {
		bare = append(bare, "--netns", p.Netns)
	}
	agents := []*benchAgent{real(binary, "meshdoctor", profile...), startBenchAgent(b, "bare-netns", binary, bare...)}
	if baseline := os.Getenv("MESHDOCTOR_BENCH_BASELINE"); baseline != "" {
		agents = append(agents, real(baseline, "baseline"))
	}
	for _, a := range agents {
		a.waitReady(b, 2*time.Minute)
		waitB(b, 2*time.Minute, func() bool { v, _ := a.metric(`meshdoctor_pods{verdict="ok"}`); return v == benchPods })
	}
	time.Sleep(warmup)

	b.ResetTimer()
	for range b.N {
		use := measureWindow(b, agents, window, fmt.Sprintf("%d real CRI pods, re-verify every 60s, warm-up %s", benchPods, warmup))
		for _, a := range agents {
			if v, _ := a.metric(`meshdoctor_pods{verdict="ok"}`); v != benchPods {
				b.Errorf("%s: %v of %d pods ok at the end of the window", a.name, v, benchPods)
			}
		}
		b.Logf("real node / bare --netns (same pods, same window): CPU %.2f×, peak RSS %.2f×",
			use[0].millicores/use[1].millicores, use[0].peakMiB/use[1].peakMiB)
		if profileDir != "" {
			// SIGTERM: the agent stops cleanly and writes its profiles on the way out.
			if err := agents[0].cmd.Process.Signal(syscall.SIGTERM); err != nil {
				b.Fatal(err)
			}
			if err := agents[0].cmd.Wait(); err != nil {
				b.Fatalf("agent stopped with %v", err)
			}
			b.Logf("profiles of the agent: %s", strings.Join(profile, " "))
		}
		if len(use) == 3 {
			b.Logf("meshdoctor / baseline build (real node): CPU %.2f×, peak RSS %.2f×",
				use[0].millicores/use[2].millicores, use[0].peakMiB/use[2].peakMiB)
		}
	}
}
