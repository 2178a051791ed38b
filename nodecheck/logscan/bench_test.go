package logscan

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The benchmark: match throughput of a scan against `grep -E` over the same generated container
// log with the same patterns, in the same run, both as child processes so that each one's peak
// RSS is its own. The issue asks for a 1 GiB log; MESHDOCTOR_BENCH_LOG_MIB makes it smaller for a
// quick run. The log is generated in a temporary directory and removed.

const (
	benchSizeEnv  = "MESHDOCTOR_BENCH_LOG_MIB"
	benchChildEnv = "MESHDOCTOR_LOGSCAN_BENCH_CHILD"
)

// benchRules applies every default pattern to the benchmark's container, so the scan does all the
// work the default rules can ask of one file, and grep gets the same patterns.
func benchRules(tb testing.TB) (string, []string) {
	rs, err := DefaultRules()
	if err != nil {
		tb.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("rules:\n")
	var patterns []string
	for _, r := range rs.Rules() {
		fmt.Fprintf(&b, "  - name: %s\n    code: %s\n    severity: %s\n    kind: persistent\n    sources: [{type: pod}]\n    pattern: %s\n    message: m\n",
			r.Name, r.Code, r.Severity, yamlQuote(r.Pattern))
		if len(r.Literals) > 0 {
			fmt.Fprintf(&b, "    literals: [%s]\n", strings.Join(mapStrings(r.Literals, yamlQuote), ", "))
		}
		patterns = append(patterns, r.Pattern)
	}
	return b.String(), patterns
}

func yamlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func mapStrings(in []string, f func(string) string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = f(s)
	}
	return out
}

// benchLines are the matching lines planted in the log, one rule each, from the real fixtures'
// formats.
var benchLines = []string{
	"2026-11-24T08:41:22.390799Z\terror\tklog\tfailed to list *v1.Pod: Get \"https://10.96.0.1:443/api/v1/pods?limit=500&resourceVersion=0\": dial tcp 10.96.0.1:443: connect: connection refused: Failed to watch\treflector=k8s.io/client-go/informers/factory.go:160 type=*v1.Pod",
	"2026-11-24T08:41:22.390799Z\terror\tcni-plugin\tFailed to get pod info: Get \"https://10.96.0.1:443/api/v1/namespaces/shop/pods/cart-7d9\": dial tcp 10.96.0.1:443: connect: connection refused\tpod=shop/cart-7d9",
	"2026-11-24T08:41:22.390799Z\twarn\tkubelet\tFailed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"4292f2321c\": plugin type=\"istio-cni\" name=\"istio-cni\" failed (add): failed to find plugin \"istio-cni\" in path [/opt/cni/bin]",
	"2026-11-24T08:41:22.390799Z\terror\tcni\tnsenter: cannot open /var/run/netns/cni-1234: No such file or directory",
}

// noise writes realistic istiod lines: what discovery logs all day.
func noise(w *bufio.Writer, r *rand.Rand, ts string) int {
	pod := fmt.Sprintf("%s-%x-%x.%s", []string{"reviews-v1", "ratings-v1", "productpage-v1", "details-v1", "cart", "checkout"}[r.IntN(6)], r.Uint32()&0xfffff, r.Uint32()&0xfff, []string{"default", "shop", "bookinfo"}[r.IntN(3)])
	var line string
	switch r.IntN(8) {
	case 0:
		line = fmt.Sprintf("%s\tinfo\tads\tPush debounce stable[%d] %d for config ServiceEntry/%s: %d.%dms since last change, %d.%dms since last push, full=true", ts, r.IntN(5000), r.IntN(9)+1, pod, r.IntN(200), r.IntN(9), r.IntN(900), r.IntN(9))
	case 1:
		line = fmt.Sprintf("%s\tinfo\tads\tXDS: Pushing Services:%d ConnectedEndpoints:%d Version:2026-11-24T08:%02d:%02dZ/%d", ts, r.IntN(300), r.IntN(80), r.IntN(60), r.IntN(60), r.IntN(9999))
	case 2:
		line = fmt.Sprintf("%s\tinfo\tads\tCDS: PUSH request for node:sidecar~10.%d.%d.%d~%s.svc.cluster.local resources:%d size:%d.%dkB cached:%d/%d", ts, r.IntN(255), r.IntN(255), r.IntN(255), pod, r.IntN(90), r.IntN(90), r.IntN(9), r.IntN(90), r.IntN(90))
	case 3:
		line = fmt.Sprintf("%s\tinfo\tdelta\tEDS: PUSH request for node:%s resources:%d removed:0 size:%d.%dkB empty:0 cached:%d/%d filtered:0", ts, pod, r.IntN(40), r.IntN(9), r.IntN(9), r.IntN(40), r.IntN(40))
	case 4:
		line = fmt.Sprintf("%s\tinfo\tads\tADS: new connection for node:%s-%d", ts, pod, r.IntN(99))
	case 5:
		line = fmt.Sprintf("%s\twarn\tmodel\tFailed to get IP for pod %s: the pod is not ready yet, watching for updates", ts, pod)
	case 6:
		line = fmt.Sprintf("%s\tinfo\tklog\tTrace[%d]: \"Reflector ListAndWatch\" name:k8s.io/client-go/informers/factory.go:160 (24-Nov-2026 08:41:%02d.%03d) (total time: %dms)", ts, r.IntN(1<<30), r.IntN(60), r.IntN(1000), r.IntN(30000))
	default:
		line = fmt.Sprintf("%s\tinfo\tcontroller\tcluster \"Kubernetes\" watching pods in namespace %s: error handling is fine, resource version %d", ts, pod, r.Uint64()%1000000000)
	}
	n, _ := fmt.Fprintf(w, "%s stdout F %s\n", ts, line)
	return n
}

var benchLog struct {
	once    sync.Once
	dir     string
	size    int64
	planted int
	err     error
}

// generateBenchLog writes the container log once per process.
func generateBenchLog(tb testing.TB) (podLogDir, file string, size int64, planted int) {
	mib := int64(1024)
	if v := os.Getenv(benchSizeEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			tb.Fatalf("%s=%q: want a size in MiB", benchSizeEnv, v)
		}
		mib = n
	}
	benchLog.once.Do(func() {
		dir, err := os.MkdirTemp("", "logscan-bench-")
		if err != nil {
			benchLog.err = err
			return
		}
		benchLog.dir = dir
		cdir := filepath.Join(dir, "pods", "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "discovery")
		if err := os.MkdirAll(cdir, 0o755); err != nil {
			benchLog.err = err
			return
		}
		f, err := os.Create(filepath.Join(cdir, "0.log"))
		if err != nil {
			benchLog.err = err
			return
		}
		defer f.Close()
		w := bufio.NewWriterSize(f, 1<<20)
		r := rand.New(rand.NewPCG(1, 2))
		ts := time.Now().UTC().Format(time.RFC3339Nano)
		var written int64
		for i := 0; written < mib<<20; i++ {
			if i%10000 == 9999 {
				n, _ := fmt.Fprintf(w, "%s stderr F %s\n", ts, benchLines[benchLog.planted%len(benchLines)])
				written += int64(n)
				benchLog.planted++
				continue
			}
			written += int64(noise(w, r, ts))
		}
		if err := w.Flush(); err != nil {
			benchLog.err = err
			return
		}
		benchLog.size = written
	})
	if benchLog.err != nil {
		tb.Fatal(benchLog.err)
	}
	return filepath.Join(benchLog.dir, "pods"),
		filepath.Join(benchLog.dir, "pods", "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "discovery", "0.log"),
		benchLog.size, benchLog.planted
}

// TestMain runs the benchmark's child scan when asked to, so that its peak RSS is measured alone.
func TestMain(m *testing.M) {
	if dir := os.Getenv(benchChildEnv); dir != "" {
		os.Exit(benchChild(dir))
	}
	code := m.Run()
	if benchLog.dir != "" {
		os.RemoveAll(benchLog.dir)
	}
	os.Exit(code)
}

// benchChild scans the pod log directory with the benchmark rules and prints the stats.
func benchChild(podLogDir string) int {
	rulesYAML, _ := benchRules(&testing.T{})
	rs, err := ParseRules([]byte(rulesYAML))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := New(Config{PodLogDir: podLogDir, Rules: rs, Since: 24 * time.Hour})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	st, err := s.Scan(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	out := struct {
		ScanStats
		PeakRSS int64 `json:"peakRSS"`
	}{st, vmHWM("/proc/self/status")}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

// runMeasured runs a command and returns its wall time, peak RSS and output. The peak is the
// process's VmHWM, polled from /proc while it runs: getrusage's ru_maxrss is no good here, as a
// child started by vfork+exec inherits the parent's high-water mark.
func runMeasured(tb testing.TB, cmd *exec.Cmd) (time.Duration, int64, []byte) {
	tb.Helper()
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatalf("%s: %v", cmd, err)
	}
	done := make(chan struct{})
	var peak int64
	go func() {
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		for {
			if hwm := vmHWM(status); hwm > peak {
				peak = hwm
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	elapsed := time.Since(start)
	close(done)
	if err != nil {
		tb.Fatalf("%s: %v\n%s", cmd, err, stderr.Bytes())
	}
	return elapsed, peak, out.Bytes()
}

// vmHWM reads a process's peak resident set size from its status file, in bytes (0 if gone).
func vmHWM(statusFile string) int64 {
	data, err := os.ReadFile(statusFile)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func BenchmarkScanVsGrep(b *testing.B) {
	grep := requireTool(b, "grep")
	podLogDir, file, size, planted := generateBenchLog(b)
	_, patterns := benchRules(b)
	grepArgs := []string{"-E", "-c"}
	for _, p := range patterns {
		grepArgs = append(grepArgs, "-e", p)
	}
	grepArgs = append(grepArgs, file)
	// Warm the page cache so both read from memory.
	warm := exec.Command("cat", file)
	warm.Stdout = nil
	must(b, warm.Run())

	mb := float64(size) / 1e6
	for i := 0; i < b.N; i++ {
		g := exec.Command(grep, grepArgs...)
		g.Env = append(os.Environ(), "LC_ALL=C")
		grepTime, grepRSS, out := runMeasured(b, g)
		grepCount, _ := strconv.Atoi(strings.TrimSpace(string(out)))

		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), benchChildEnv+"="+podLogDir)
		scanTime, scanRSS, out := runMeasured(b, child)
		var st struct {
			ScanStats
			PeakRSS int64 `json:"peakRSS"`
		}
		must(b, json.Unmarshal(out, &st))
		scanRSS = max(scanRSS, st.PeakRSS) // the child's own reading at its end is exact

		if grepCount != planted || st.Matches != int64(planted) {
			b.Fatalf("planted %d matching lines: grep counted %d, the scan %d", planted, grepCount, st.Matches)
		}
		scanMBs, grepMBs := mb/scanTime.Seconds(), mb/grepTime.Seconds()
		b.ReportMetric(scanMBs, "scan-MB/s")
		b.ReportMetric(grepMBs, "grep-MB/s")
		b.ReportMetric(scanMBs/grepMBs, "scan/grep")
		b.ReportMetric(float64(scanRSS)/(1<<20), "scan-RSS-MiB")
		b.ReportMetric(float64(grepRSS)/(1<<20), "grep-RSS-MiB")
		b.Logf("%.0f MB log, %d matches: scan %.0f MB/s (%s, RSS %.1f MiB), grep -E %.0f MB/s (%s, RSS %.1f MiB), ratio %.2f",
			mb, planted, scanMBs, scanTime.Round(time.Millisecond), float64(scanRSS)/(1<<20),
			grepMBs, grepTime.Round(time.Millisecond), float64(grepRSS)/(1<<20), scanMBs/grepMBs)
		if scanRSS > 32<<20 {
			b.Errorf("scan peak RSS %.1f MiB, the budget is 32 MiB", float64(scanRSS)/(1<<20))
		}
	}
}
