package node_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// maxPods is kubelet's default maximum number of pods per node.
const maxPods = 110

// BenchmarkCheckNode measures a whole-node `meshdoctor check` over 110 real pod sandboxes, each
// with Istio's sidecar rules written by a real istio-init, its istio-proxy and an app, side by
// side with the baseline a shell gives: `nsenter --net=NETNS iptables-save` for every pod, in a
// loop (which only dumps rules: no discovery, no comparison, one backend and family). Both run
// in the same process against the same node; the summary line gives the ratio.
func BenchmarkCheckNode(b *testing.B) {
	n := kubelet.Start(b)
	ctx, cancel := context.WithTimeout(b.Context(), 15*time.Minute)
	defer cancel()
	netns := make([]string, maxPods)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	errs := make([]error, maxPods)
	for i := range maxPods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p, err := n.RunPod(ctx, kubelet.Pod{Namespace: "bench", Name: "pod-" + strconv.Itoa(i),
				Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus("istio-init")},
				InitContainers: []kubelet.Container{kubelet.IstioInit()},
				Containers:     []kubelet.Container{kubelet.IstioProxy(), kubelet.App()}})
			if err == nil && p.ExitCodes[istiopod.ContainerIstioInit] != 0 {
				err = fmt.Errorf("istio-init of %s exited %d", p.Name, p.ExitCodes[istiopod.ContainerIstioInit])
			}
			errs[i] = err
			if p != nil {
				netns[i] = p.Netns
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("%d pods running in %s", maxPods, time.Since(start))

	var mine, base runCost
	b.Run("discovery", func(b *testing.B) {
		rt, err := containerd.New(n.Containerd.Address, "/")
		if err != nil {
			b.Fatal(err)
		}
		defer rt.Close()
		for b.Loop() {
			ts, err := rt.Discover(ctx)
			if err != nil || len(ts) != maxPods {
				b.Fatalf("%d pods, %v", len(ts), err)
			}
		}
	})
	b.Run("meshdoctor-check", func(b *testing.B) {
		mine = measure(b, func() *exec.Cmd {
			return exec.CommandContext(ctx, binary, "check", "-o", "json", "--containerd-address", n.Containerd.Address)
		}, 0)
	})
	// With MESHDOCTOR_BENCH_PROFILE_DIR, one more run writes check's CPU and heap profiles there
	// (go tool pprof -top DIR/check-cpu.pprof): where the whole-node check's time goes.
	if dir := os.Getenv("MESHDOCTOR_BENCH_PROFILE_DIR"); dir != "" {
		cpu, heap := filepath.Join(dir, "check-cpu.pprof"), filepath.Join(dir, "check-heap.pprof")
		out, err := exec.CommandContext(ctx, binary, "check", "-o", "json", "--containerd-address", n.Containerd.Address,
			"--cpu-profile", cpu, "--heap-profile", heap).CombinedOutput()
		if err != nil {
			b.Fatalf("check with profiles: %v\n%s", err, out[max(0, len(out)-2000):])
		}
		b.Logf("profiles of one whole-node check: %s, %s", cpu, heap)
	}
	// Process start alone: the same binary doing nothing but parse flags and exit, so that the
	// whole-node figure can be split into start-up and work.
	b.Run("meshdoctor-process-start", func(b *testing.B) {
		start := measure(b, func() *exec.Cmd { return exec.CommandContext(ctx, binary, "version") }, 0)
		if start.runs > 0 && mine.runs > 0 {
			fmt.Printf("whole node, %d pods: process start %.1f ms CPU, %.1f ms wall of check's %.0f ms CPU, %.0f ms wall "+
				"(%.2f ms CPU/pod without it)\n", maxPods, start.cpuMsPerPod()*maxPods, start.wallMs(),
				mine.cpuMsPerPod()*maxPods, mine.wallMs(), mine.cpuMsPerPod()-start.cpuMsPerPod())
		}
	})
	b.Run("baseline-nsenter-iptables-save", func(b *testing.B) {
		script := `for ns in ` + strings.Join(netns, " ") + `; do nsenter --net="$ns" iptables-save >/dev/null || exit 1; done`
		base = measure(b, func() *exec.Cmd { return exec.CommandContext(ctx, "sh", "-c", script) }, 0)
	})
	// With MESHDOCTOR_BENCH_BASELINE=path/to/an/older/meshdoctor, that build checks the same node
	// in the same run: what a change costs or saves, as a ratio the shared machine's noise spares.
	if older := os.Getenv("MESHDOCTOR_BENCH_BASELINE"); older != "" {
		var prev runCost
		b.Run("meshdoctor-check-baseline-build", func(b *testing.B) {
			prev = measure(b, func() *exec.Cmd {
				return exec.CommandContext(ctx, older, "check", "-o", "json", "--containerd-address", n.Containerd.Address)
			}, 1) // an older build may judge some pods otherwise: its exit status is not the point
		})
		if mine.runs > 0 && prev.runs > 0 {
			fmt.Printf("whole node, %d pods: this build %.2f ms CPU/pod, %.0f ms wall | %s %.2f ms CPU/pod, %.0f ms wall | "+
				"this/baseline build: CPU %.2fx, wall %.2fx\n", maxPods, mine.cpuMsPerPod(), mine.wallMs(), older,
				prev.cpuMsPerPod(), prev.wallMs(), mine.cpuMsPerPod()/prev.cpuMsPerPod(), mine.wallMs()/prev.wallMs())
		}
	}
	if mine.runs > 0 && base.runs > 0 {
		fmt.Printf("whole node, %d pods: meshdoctor check %.0f ms wall, %.2f ms CPU/pod | baseline nsenter+iptables-save loop "+
			"%.0f ms wall, %.2f ms CPU/pod | meshdoctor/baseline: wall %.2fx, CPU %.2fx\n",
			maxPods, mine.wallMs(), mine.cpuMsPerPod(), base.wallMs(), base.cpuMsPerPod(),
			mine.wallMs()/base.wallMs(), mine.cpuMsPerPod()/base.cpuMsPerPod())
	}
}

// runCost sums what the measured command took over its runs.
type runCost struct {
	runs      int
	wall, cpu time.Duration
}

func (c runCost) wallMs() float64 { return float64(c.wall.Milliseconds()) / float64(c.runs) }
func (c runCost) cpuMsPerPod() float64 {
	return float64(c.cpu.Microseconds()) / 1000 / float64(c.runs) / maxPods
}

// measure runs the command once per iteration and reports wall time per node and CPU time (user +
// system, its children included) per pod. okExit is the exit status that counts as success.
func measure(b *testing.B, cmd func() *exec.Cmd, okExit int) runCost {
	var c runCost
	for b.Loop() {
		run := cmd()
		start := time.Now()
		err := run.Run()
		c.wall += time.Since(start)
		if err != nil && run.ProcessState.ExitCode() != okExit {
			b.Fatalf("%s: %v", run.Path, err)
		}
		c.cpu += run.ProcessState.UserTime() + run.ProcessState.SystemTime()
		c.runs++
	}
	b.ReportMetric(c.wallMs(), "ms-wall/node")
	b.ReportMetric(c.cpuMsPerPod(), "ms-cpu/pod")
	b.ReportMetric(0, "ns/op") // the per-node figures above are the measure
	return c
}
