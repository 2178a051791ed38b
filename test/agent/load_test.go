package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// loadSetting reads a duration or rate of the load benchmark from the environment.
func loadSetting(b *testing.B, name string, def float64, parse func(string) (float64, error)) float64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	f, err := parse(v)
	if err != nil || f <= 0 {
		b.Fatalf("%s=%q: want a positive value", name, v)
	}
	return f
}

func parseSeconds(s string) (float64, error) {
	d, err := time.ParseDuration(s)
	return d.Seconds(), err
}

// loadSample is what the agent uses at one moment of the run.
type loadSample struct {
	at              time.Duration
	goroutines, fds float64
	rssMiB          float64
	ok, broken      float64
}

// BenchmarkAgentUnderChurn (issue 16's load): 110 real CRI pods injected as Istio does (their
// istio-init writes the rules with pilot-agent), plus a churn of pods created and removed at
// MESHDOCTOR_LOAD_RATE per second (default 5) for MESHDOCTOR_LOAD_WINDOW (default 5m), each
// living MESHDOCTOR_LOAD_LIFETIME (default 10s), under an agent re-checking every 60 s. It
// reports how soon each churned pod was first checked after its sandbox was asked for, and
// whether goroutines, open descriptors (the per-pod nftables sockets among them) and RSS stay
// flat. The rate achieved is reported beside the one asked for: the test machine's containerd
// may not keep up.
func BenchmarkAgentUnderChurn(b *testing.B) {
	rate := loadSetting(b, "MESHDOCTOR_LOAD_RATE", 5, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
	window := time.Duration(loadSetting(b, "MESHDOCTOR_LOAD_WINDOW", 300, parseSeconds) * float64(time.Second))
	lifetime := time.Duration(loadSetting(b, "MESHDOCTOR_LOAD_LIFETIME", 10, parseSeconds) * float64(time.Second))
	node := kubelet.Start(b)
	ctx, cancel := context.WithTimeout(b.Context(), window+20*time.Minute)
	defer cancel()
	runPods(b, ctx, node, "bench", benchPods, 8)
	empty := b.TempDir()
	// With MESHDOCTOR_BENCH_PROFILE_DIR, the agent writes its CPU profile of the whole run there
	// when it is stopped at the end (go tool pprof -top FILE).
	var profile []string
	if dir := os.Getenv("MESHDOCTOR_BENCH_PROFILE_DIR"); dir != "" {
		profile = []string{"--cpu-profile", filepath.Join(dir, "agent-churn-cpu.pprof")}
	}
	a := startBenchAgent(b, "meshdoctor", binary, append(profile, "agent", "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "60s", "--node-backend", "none", "--node-name", "bench-node", "--state-dir", b.TempDir(),
		"--cni-conf-dir", empty, "--cni-bin-dir", empty, "--pod-log-dir", node.Containerd.PodLogDir)...)
	a.waitReady(b, 2*time.Minute)
	waitB(b, 2*time.Minute, func() bool { v, _ := a.metric(`meshdoctor_pods{verdict="ok"}`); return v == benchPods })
	time.Sleep(10 * time.Second) // the steady pods' subscriptions and first re-checks settle
	// The agent's CPU over a steady minute (the 110 pods' periodic re-checks), to tell what the
	// churn costs on top of it.
	steady := time.Minute
	steadyTicks := cpuTicks(b, a.cmd.Process.Pid)
	time.Sleep(steady)
	steadyMillicores := float64(cpuTicks(b, a.cmd.Process.Pid)-steadyTicks) / 100 / steady.Seconds() * 1000 // USER_HZ = 100

	sample := func(start time.Time) loadSample {
		m := func(series string) float64 { v, _ := a.metric(series); return v }
		return loadSample{at: time.Since(start).Round(time.Second), goroutines: m("go_goroutines"), fds: m("process_open_fds"),
			rssMiB: float64(statusKB(b, a.cmd.Process.Pid, "VmRSS")) / 1024,
			ok:     m(`meshdoctor_pods{verdict="ok"}`), broken: m(`meshdoctor_pods{verdict="broken"}`)}
	}

	// When each sandbox started, by containerd's own /tasks/start events: the sandbox record is
	// made seconds earlier on a loaded machine (CNI, the pause container), and the agent can
	// know of a pod only from its start.
	started := watchTaskStarts(b, ctx, node.Containerd.Address)

	b.ResetTimer()
	for range b.N {
		start := time.Now()
		churnTicks := cpuTicks(b, a.cmd.Process.Pid)
		samples := []loadSample{sample(start)}
		type churned struct {
			name      string
			sandboxID string
			requested time.Time
			making    time.Duration // how long the test bed took to make the pod (RunPod)
		}
		var (
			mu       sync.Mutex
			made     []churned
			failures []error
			skipped  atomic.Int64
			wg       sync.WaitGroup
		)
		// Pods being made or living at once, beyond which a tick is skipped: room for the asked
		// rate's pods over their lifetime and 10 s of making and removing each.
		inFlight := max(32, int(rate*(lifetime.Seconds()+10)))
		sem := make(chan struct{}, inFlight)
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		sampleTick := time.NewTicker(10 * time.Second)
		for i := 0; time.Since(start) < window; {
			select {
			case <-sampleTick.C:
				samples = append(samples, sample(start))
				continue
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				skipped.Add(1)
				continue
			}
			name := "churn-" + strconv.Itoa(i)
			i++
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				asked := time.Now()
				p, err := node.RunPod(ctx, kubelet.InjectedPod("churn", name))
				making := time.Since(asked)
				var requested time.Time
				if err == nil {
					// The sandbox's start, as the runtime recorded it: RunPod also runs istio-init
					// to completion and starts the other containers, which a loaded machine slows.
					var st *runtimeapi.PodSandboxStatusResponse
					if st, err = node.Runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.SandboxID}); err == nil {
						requested = time.Unix(0, st.GetStatus().GetCreatedAt())
					}
				}
				if err == nil {
					time.Sleep(lifetime)
					err = node.RemovePod(ctx, p)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failures = append(failures, err)
					return
				}
				made = append(made, churned{name, p.SandboxID, requested, making})
			}()
		}
		tick.Stop()
		sampleTick.Stop()
		wg.Wait()
		elapsed := time.Since(start)
		churnMillicores := float64(cpuTicks(b, a.cmd.Process.Pid)-churnTicks) / 100 / elapsed.Seconds() * 1000
		time.Sleep(70 * time.Second) // a full re-check period after the churn: what stays is a leak
		samples = append(samples, sample(start))
		if len(failures) > 0 {
			b.Fatalf("%d pods could not be made or removed, the first: %v", len(failures), failures[0])
		}

		// First check of each churned pod: the agent's "pod checked" log line that names it first.
		firstCheck := firstChecks(b, a.logs(), "churn/")
		var lat, latStarted []time.Duration
		missed := 0
		for _, c := range made {
			at, ok := firstCheck["churn/"+c.name]
			if !ok {
				missed++
				continue
			}
			lat = append(lat, at.Sub(c.requested))
			if st, ok := started.at(c.sandboxID); ok {
				latStarted = append(latStarted, at.Sub(st))
			}
		}
		slices.Sort(lat)
		slices.Sort(latStarted)
		var makings []time.Duration
		for _, c := range made {
			makings = append(makings, c.making)
		}
		slices.Sort(makings)
		if len(makings) > 0 {
			b.Logf("the test bed took p50 %s, max %s to make a pod (sandbox, istio-init run to its end, proxy and app started)",
				makings[len(makings)/2].Round(time.Millisecond), makings[len(makings)-1].Round(time.Millisecond))
		}
		pctOf := func(lat []time.Duration, p float64) time.Duration {
			if len(lat) == 0 {
				return 0
			}
			return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(time.Millisecond)
		}
		pct := func(p float64) time.Duration { return pctOf(lat, p) }
		within := func(lat []time.Duration, d time.Duration) int {
			n := 0
			for _, l := range lat {
				if l <= d {
					n++
				}
			}
			return n
		}
		within2s := within(lat, 2*time.Second)
		first, last := samples[1], samples[len(samples)-1]
		maxOf := func(f func(loadSample) float64) float64 {
			m := 0.0
			for _, s := range samples {
				m = max(m, f(s))
			}
			return m
		}
		b.Logf("churn: %d pods made and removed in %s (%.2f/s achieved, %.0f/s asked, %d ticks skipped: %d in flight), lifetime %s, %d steady pods",
			len(made), elapsed.Round(time.Second), float64(len(made))/elapsed.Seconds(), rate, skipped.Load(), inFlight, lifetime, benchPods)
		b.Logf("first check after the sandbox was created (the runtime's time): p50 %s, p95 %s, max %s; %d/%d within 2 s; %d never checked",
			pct(0.5), pct(0.95), pct(1), within2s, len(lat), missed)
		b.Logf("first check after the sandbox started (containerd's /tasks/start of the pause container): p50 %s, p95 %s, max %s; %d/%d within 2 s",
			pctOf(latStarted, 0.5), pctOf(latStarted, 0.95), pctOf(latStarted, 1), within(latStarted, 2*time.Second), len(latStarted))
		b.Logf("goroutines %v → %v (max %v), open fds %v → %v (max %v), RSS %.1f → %.1f MiB (max %.1f, %+.1f%%), pods ok at the end %v (want %d)",
			first.goroutines, last.goroutines, maxOf(func(s loadSample) float64 { return s.goroutines }),
			first.fds, last.fds, maxOf(func(s loadSample) float64 { return s.fds }),
			first.rssMiB, last.rssMiB, maxOf(func(s loadSample) float64 { return s.rssMiB }), (last.rssMiB/first.rssMiB-1)*100,
			last.ok, benchPods)
		// What one churned pod cost the agent (its discovery, first check, re-checks while it
		// lived, its events and its removal), from the CPU above the steady minute's.
		perPod := 0.0
		if len(made) > 0 {
			perPod = (churnMillicores - steadyMillicores) / 1000 * elapsed.Seconds() / float64(len(made)) * 1000
		}
		b.Logf("agent CPU: %.2f millicores steady (110 pods, 1 min), %.2f during the churn: %.1f ms of CPU per churned pod, so %.0f millicores at %.0f pods/s",
			steadyMillicores, churnMillicores, perPod, steadyMillicores+perPod*rate, rate)
		for _, s := range samples {
			b.Logf("  +%s goroutines %v fds %v rss %.1f MiB ok %v broken %v", s.at, s.goroutines, s.fds, s.rssMiB, s.ok, s.broken)
		}
		// Every broken verdict the agent gave a churned pod, with its codes: a pod made or
		// removed is never broken by being made or removed.
		brokenChurned := brokenVerdicts(b, a.logs(), "churn/")
		for i, l := range brokenChurned {
			if i == 10 {
				b.Logf("  … %d more", len(brokenChurned)-10)
				break
			}
			b.Logf("  broken: %s", l)
		}
		b.Logf("%d broken verdicts of churned pods", len(brokenChurned))
		b.ReportMetric(float64(len(brokenChurned)), "broken-churned-verdicts")
		if missed > 0 || last.ok != benchPods || last.broken != 0 {
			b.Errorf("%d churned pods never checked; at the end %v ok, %v broken (want %d, 0)", missed, last.ok, last.broken, benchPods)
		}
		if len(brokenChurned) > 0 {
			b.Errorf("%d broken verdicts of churned pods, each made healthy and removed as kubelet removes a pod", len(brokenChurned))
		}
		if last.fds > first.fds+2 || last.goroutines > first.goroutines+5 {
			b.Errorf("descriptors or goroutines grew: fds %v → %v, goroutines %v → %v", first.fds, last.fds, first.goroutines, last.goroutines)
		}
		b.ReportMetric(pct(0.5).Seconds(), "first-check-p50-s")
		b.ReportMetric(pct(0.95).Seconds(), "first-check-p95-s")
		b.ReportMetric(pctOf(latStarted, 0.5).Seconds(), "first-check-after-start-p50-s")
		b.ReportMetric(pctOf(latStarted, 0.95).Seconds(), "first-check-after-start-p95-s")
		b.ReportMetric(float64(len(made))/elapsed.Seconds(), "churn-pods/s")
		b.ReportMetric(last.rssMiB/first.rssMiB, "rss-end/start")
		b.ReportMetric(steadyMillicores, "steady-millicores")
		b.ReportMetric(churnMillicores, "churn-millicores")
		b.ReportMetric(perPod, "cpu-ms/churned-pod")
		if profile != nil {
			// SIGTERM: the agent stops cleanly and writes its profile on the way out.
			if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				b.Fatal(err)
			}
			if err := a.cmd.Wait(); err != nil {
				b.Fatalf("agent stopped with %v", err)
			}
			b.Logf("profile of the agent: %s", profile[1])
		}
	}
}

// firstChecks maps each pod whose key starts with prefix to the time of the agent's first log
// line about checking it.
func firstChecks(b *testing.B, logs, prefix string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"msg":"pod checked`) || !strings.Contains(line, `"pod":"`+prefix) {
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
			Pod  string    `json:"pod"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			b.Fatalf("agent log line %q: %v", line, err)
		}
		if _, ok := out[rec.Pod]; !ok {
			out[rec.Pod] = rec.Time
		}
	}
	return out
}

// taskStarts records when containerd started each task of the CRI namespace, from its events.
type taskStarts struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// at is when the task of container id started, if an event said so.
func (t *taskStarts) at(id string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.m[id]
	return at, ok
}

// watchTaskStarts subscribes to containerd's /tasks/start events until ctx ends.
func watchTaskStarts(b *testing.B, ctx context.Context, address string) *taskStarts {
	conn, err := containerd.Dial(address)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	stream, err := eventsapi.NewEventsClient(conn).Subscribe(ctx, &eventsapi.SubscribeRequest{
		Filters: []string{`namespace=="k8s.io",topic=="/tasks/start"`}})
	if err != nil {
		b.Fatal(err)
	}
	ts := &taskStarts{m: map[string]time.Time{}}
	go func() {
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			v, err := env.GetEvent().UnmarshalNew()
			if err != nil {
				continue
			}
			if e, ok := v.(*apievents.TaskStart); ok {
				ts.mu.Lock()
				ts.m[e.ContainerID] = env.GetTimestamp().AsTime()
				ts.mu.Unlock()
			}
		}
	}()
	return ts
}

// brokenVerdicts returns, for each agent log line that gave a pod whose key starts with prefix
// the verdict broken, the pod, why it was checked and the codes.
func brokenVerdicts(b *testing.B, logs, prefix string) []string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"verdict":"broken"`) || !strings.Contains(line, `"pod":"`+prefix) {
			continue
		}
		var rec struct {
			Time  time.Time `json:"time"`
			Pod   string    `json:"pod"`
			Why   string    `json:"why"`
			Codes []string  `json:"codes"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			b.Fatalf("agent log line %q: %v", line, err)
		}
		out = append(out, fmt.Sprintf("%s %s (%s): %v", rec.Time.Format("15:04:05.000"), rec.Pod, rec.Why, rec.Codes))
	}
	return out
}

// runPods makes n injected pods in namespace ns, conc at a time.
func runPods(b *testing.B, ctx context.Context, node *kubelet.Node, ns string, n, conc int) []*kubelet.RunningPod {
	pods := make([]*kubelet.RunningPod, n)
	errs := make([]error, n)
	setup := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for i := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pods[i], errs[i] = node.RunPod(ctx, kubelet.InjectedPod(ns, "pod-"+strconv.Itoa(i)))
			if errs[i] == nil && pods[i].ExitCodes["istio-init"] != 0 {
				errs[i] = fmt.Errorf("istio-init of %s exited %d", pods[i].Name, pods[i].ExitCodes["istio-init"])
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("%d pods running in %s", n, time.Since(setup).Round(time.Second))
	return pods
}
