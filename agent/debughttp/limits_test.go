package debughttp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/agent/debughttp"
	"github.com/meshdoctor/meshdoctor/agent/metrics"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
)

// node is a node of n pods as the agent would hold it after a sweep: some broken, with findings
// and a dump of the rules read, so that the pages are as large as a full node's (110 pods).
type node struct {
	pods  []agent.PodState
	swept time.Time
}

func newNode(n int) *node {
	rules := strings.Repeat("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n", 60)
	nd := &node{swept: time.Now()}
	for i := range n {
		v, findings := nodecheck.VerdictOK, []nodecheck.Finding(nil)
		if i%5 == 0 {
			v = nodecheck.VerdictBroken
			findings = []nodecheck.Finding{{
				Code: "CaptureBypassed", Severity: nodecheck.SeverityError,
				Message:  "a SYN to port 8080 reached the app without being redirected to 15006",
				Remedy:   "look for a rule ahead of ISTIO_INBOUND in the nat PREROUTING chain",
				Evidence: map[string]any{"port": 8080, "rule": "-A PREROUTING -p tcp -j ACCEPT"},
			}}
		}
		t := nodecheck.Target{Namespace: "shop", Name: fmt.Sprintf("pay-%d", i), UID: fmt.Sprintf("uid-%d", i),
			Netns: fmt.Sprintf("/var/run/netns/cni-%d", i), SandboxID: strings.Repeat("f", 64)}
		nd.pods = append(nd.pods, agent.PodState{
			Target: t, Since: nd.swept, Checked: nd.swept, Why: "recheck",
			Outcome: diagnose.Outcome{
				Pod: nodecheck.PodReport{Namespace: t.Namespace, Name: t.Name, UID: t.UID, Netns: t.Netns, Verdict: v,
					Capture:  nodecheck.Capture{Mode: "sidecar-redirect", Backend: "nft", Intent: "init-args"},
					Findings: findings},
				Details: map[string]any{"capture": map[string]any{"rules": rules}},
			},
		})
	}
	return nd
}

func (n *node) Ready() bool          { return true }
func (n *node) Name() string         { return "node-1" }
func (n *node) LastSweep() time.Time { return n.swept }
func (n *node) Node() agent.NodeState {
	return agent.NodeState{Checked: n.swept}
}
func (n *node) Pods() []agent.PodState { return n.pods }
func (n *node) Pod(key string) (agent.PodState, bool) {
	for _, p := range n.pods {
		if p.Key() == key {
			return p, true
		}
	}
	return agent.PodState{}, false
}
func (n *node) Report() *nodecheck.Report {
	r := &nodecheck.Report{Node: n.Name()}
	for _, p := range n.pods {
		r.Pods = append(r.Pods, p.Outcome.Pod)
	}
	return r
}

// debugHandler is the agent's debug endpoint (no token: loopback) on a full node, with the
// agent's own metrics, per-pod series included.
func debugHandler(n *node) http.Handler {
	m := metrics.New(metrics.Options{Version: "test", PerPod: true})
	m.Watch(n)
	return debughttp.DebugHandler(n, m.Registry, nil, slog.New(slog.DiscardHandler))
}

// serve serves h on a fresh loopback port until the test ends, and returns its address.
func serve(t *testing.T, h http.Handler, o debughttp.Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- debughttp.ServeListener(ctx, ln, h, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	})
	return ln.Addr().String()
}

func client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
}

func get(t *testing.T, c *http.Client, url string) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, time.Since(start)
}

// trickle writes msg to conn one byte a second until it is written, the connection fails or
// stop is closed.
func trickle(conn net.Conn, msg string, stop <-chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := range len(msg) {
		if _, err := conn.Write([]byte{msg[i]}); err != nil {
			return
		}
		select {
		case <-tick.C:
		case <-stop:
			return
		}
	}
}

// A slowloris client (headers, or a body, one byte a second) is cut off by the server's
// timeouts, and so is one that sends a request and then holds its connection idle; a normal
// client still gets its page: at once while a connection slot is free, within the timeout when
// the slow clients hold every slot.
func TestSlowClientsAreCutOff(t *testing.T) {
	const headerTimeout, readTimeout, idleTimeout = time.Second, 2 * time.Second, 1500 * time.Millisecond
	const req = "GET /debug/report HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n"
	for _, tc := range []struct {
		name     string
		slow     int
		maxConns int
		how      string        // headers or body one byte a second, or a request and then idle
		cutOff   time.Duration // when the slow connections must be closed
		pageIn   time.Duration // how soon a normal client must have its page
	}{
		{"headers, a slot left", 3, 4, "headers", headerTimeout, 500 * time.Millisecond},
		{"headers, every slot taken", 4, 4, "headers", headerTimeout, headerTimeout + time.Second},
		{"body, a slot left", 3, 4, "body", readTimeout, 500 * time.Millisecond},
		{"body, every slot taken", 4, 4, "body", readTimeout, readTimeout + time.Second},
		{"idle, every slot taken", 4, 4, "idle", idleTimeout, idleTimeout + time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, debugHandler(newNode(110)), debughttp.Options{
				ReadHeaderTimeout: headerTimeout, ReadTimeout: readTimeout, IdleTimeout: idleTimeout, MaxConns: tc.maxConns,
			})
			stop := make(chan struct{})
			defer close(stop)
			type cut struct {
				after time.Duration
				err   error
			}
			cuts := make(chan cut, tc.slow)
			for range tc.slow {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				start := time.Now()
				switch tc.how {
				case "headers":
					go trickle(conn, req, stop)
				case "body":
					if _, err := io.WriteString(conn, "GET /debug/report HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"); err != nil {
						t.Fatal(err)
					}
					go trickle(conn, strings.Repeat("x", 100), stop)
				case "idle":
					if _, err := io.WriteString(conn, req); err != nil {
						t.Fatal(err)
					}
				}
				go func() {
					// Read until the server closes the connection (a bounded wait: 3 times the cut-off).
					_ = conn.SetReadDeadline(start.Add(3 * tc.cutOff))
					_, err := io.Copy(io.Discard, conn)
					cuts <- cut{time.Since(start), err}
				}()
			}
			code, took := get(t, client(5*time.Second), "http://"+addr+"/debug/report")
			if code != http.StatusOK || took > tc.pageIn {
				t.Errorf("a normal client beside %d slow ones got %d in %v, want 200 within %v", tc.slow, code, took, tc.pageIn)
			}
			for range tc.slow {
				c := <-cuts
				var ne net.Error
				if errors.As(c.err, &ne) && ne.Timeout() {
					t.Fatalf("a slow connection is still open after %v", c.after)
				}
				if c.after < tc.cutOff-100*time.Millisecond || c.after > tc.cutOff+time.Second {
					t.Errorf("a slow connection was closed after %v, want about %v", c.after, tc.cutOff)
				}
				t.Logf("slow connection closed after %v; normal client's page in %v", c.after.Round(time.Millisecond), took.Round(time.Millisecond))
			}
		})
	}
}

// Over MaxInFlight a request is answered 503 with Retry-After at once, health is still served,
// and a slot freed serves again.
func TestInFlightLimit(t *testing.T) {
	const max = 3
	entered, release := make(chan struct{}), make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, _ *http.Request) {
		entered <- struct{}{}
		<-release
	})
	mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) {})
	addr := serve(t, mux, debughttp.Options{MaxInFlight: max})
	c := client(5 * time.Second)
	var wg sync.WaitGroup
	for range max {
		wg.Go(func() {
			if code, _ := get(t, c, "http://"+addr+"/slow"); code != http.StatusOK {
				t.Errorf("a request within the limit got %d", code)
			}
		})
		<-entered
	}
	start := time.Now()
	resp, err := c.Get("http://" + addr + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || time.Since(start) > time.Second {
		t.Errorf("request %d of %d allowed got %d, Retry-After %q in %v; want 503, 1, at once",
			max+1, max, resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start))
	}
	if code, _ := get(t, c, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with every slot taken got %d, want 200", code)
	}
	close(release)
	wg.Wait()
	go func() { <-entered }()
	if code, _ := get(t, c, "http://"+addr+"/slow"); code != http.StatusOK {
		t.Errorf("a request after the slots were freed got %d, want 200", code)
	}
}

// A client that asks for a page and never reads it holds its slot until WriteTimeout, not for
// ever: the handler's writes fail, its context ends, and the next request is served.
func TestSlowReaderIsCutOff(t *testing.T) {
	const writeTimeout = time.Second
	ended := make(chan time.Duration, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1<<12 && r.Context().Err() == nil; i++ { // 256 MiB at most
			if _, err := w.Write(chunk); err != nil {
				break
			}
		}
		ended <- time.Since(start)
	})
	mux.HandleFunc("GET /small", func(http.ResponseWriter, *http.Request) {})
	addr := serve(t, mux, debughttp.Options{WriteTimeout: writeTimeout, MaxInFlight: 1})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case took := <-ended:
		if took < writeTimeout-100*time.Millisecond || took > writeTimeout+time.Second {
			t.Errorf("the handler of a page nobody reads ended after %v, want about %v", took, writeTimeout)
		}
		t.Logf("the handler of a page nobody reads ended after %v", took.Round(time.Millisecond))
	case <-time.After(3 * writeTimeout):
		t.Fatalf("the handler of a page nobody reads still runs after %v", 3*writeTimeout)
	}
	if code, _ := get(t, client(5*time.Second), "http://"+addr+"/small"); code != http.StatusOK {
		t.Errorf("the next request got %d, want 200", code)
	}
}

// childEnv makes TestServeChild serve, in a process of its own, the pages TestThousandConcurrentRequests
// floods: so that the memory measured is the server's, not the 1,000 clients'.
const childEnv = "MESHDOCTOR_TEST_SERVE_CHILD"

// 1,000 requests at once on the pages of a full node, served with the default Options by a
// process of its own: each is answered 200 or 503, none hangs, the goroutines of both sides
// return to where they were, and the server's heap and RSS grow by a few MiB, where without
// the limits they grow by some 45.
func TestThousandConcurrentRequests(t *testing.T) {
	const n = 1000
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	out := bufio.NewScanner(stdout)
	line := func(prefix string) []string {
		for out.Scan() {
			if rest, ok := strings.CutPrefix(out.Text()+" ", prefix+" "); ok {
				return strings.Fields(rest)
			}
		}
		t.Fatalf("the serving process said no %q line: %v", prefix, out.Err())
		return nil
	}
	addr := line("addr")[0]
	tr := &http.Transport{DisableKeepAlives: true}
	c := &http.Client{Timeout: 20 * time.Second, Transport: tr}
	paths := []string{"/debug/report", "/metrics", "/", "/debug/pods/shop/pay-5", "/readyz"}
	for _, p := range paths {
		if code, _ := get(t, c, "http://"+addr+p); code != http.StatusOK {
			t.Fatalf("%s: %d", p, code)
		}
	}
	if _, err := io.WriteString(stdin, "begin\n"); err != nil {
		t.Fatal(err)
	}
	line("ready")
	status := func(field string) int64 { return procKiB(cmd.Process.Pid, field) }
	rss0 := status("VmRSS")
	runtime.GC()
	before := runtime.NumGoroutine()
	var mu sync.Mutex
	codes := map[string]int{}
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-begin
			key := ""
			resp, err := c.Get("http://" + addr + paths[i%len(paths)])
			if err != nil {
				key = "error: " + err.Error()
			} else {
				_, err = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				key = strconv.Itoa(resp.StatusCode)
				if err != nil {
					key = "error reading: " + err.Error()
				}
			}
			mu.Lock()
			codes[key]++
			mu.Unlock()
		})
	}
	start := time.Now()
	close(begin)
	wg.Wait()
	took := time.Since(start)
	rssPeak, rss1 := status("VmHWM"), status("VmRSS")
	if codes["200"]+codes["503"] != n || codes["200"] == 0 {
		t.Errorf("%d requests at once: %v; want each 200 or 503", n, codes)
	}
	tr.CloseIdleConnections()
	now := eventually(func() int { return runtime.NumGoroutine() }, before+2)
	if now > before+2 {
		t.Errorf("the clients' goroutines: %d before, %d after the requests", before, now)
	}

	if _, err := io.WriteString(stdin, "done\n"); err != nil {
		t.Fatal(err)
	}
	var st [5]int64
	for i, f := range line("stats") {
		st[i], _ = strconv.ParseInt(f, 10, 64)
	}
	_ = stdin.Close()
	for out.Scan() { // the rest (PASS), read before Wait closes the pipe
	}
	exited = true
	if err := cmd.Wait(); err != nil {
		t.Errorf("the serving process: %v", err)
	}
	heap0, heapPeak, heap1, g0, g1 := st[0], st[1], st[2], st[3], st[4]
	const mib = 1 << 20
	t.Logf("%d requests in %v: %v; the server's goroutines %d before, %d after; the clients' %d before, %d after",
		n, took.Round(time.Millisecond), codes, g0, g1, before, now)
	t.Logf("the server's heap in use %.1f MiB before, %.1f MiB at the peak (+%.1f), %.1f MiB after a GC; RSS %.1f MiB before, %.1f at the peak (+%.1f), %.1f after",
		float64(heap0)/mib, float64(heapPeak)/mib, float64(heapPeak-heap0)/mib, float64(heap1)/mib,
		float64(rss0)/1024, float64(rssPeak)/1024, float64(rssPeak-rss0)/1024, float64(rss1)/1024)
	if g1 > g0 {
		t.Errorf("the server's goroutines: %d before, %d after the requests", g0, g1)
	}
	// Without the limits both grow by some 45 MiB.
	if grown := heapPeak - heap0; grown > 12*mib {
		t.Errorf("the server's heap grew by %.1f MiB during %d requests at once, want at most 12", float64(grown)/mib, n)
	}
	if grown := rssPeak - rss0; grown > 16<<10 && !raceDetector {
		t.Errorf("the server's RSS grew by %.1f MiB during %d requests at once, want at most 16", float64(grown)/1024, n)
	}
}

// TestServeChild is the serving side of TestThousandConcurrentRequests: it serves a full node's
// debug endpoint with the default Options, prints "addr <address>", and when a line arrives on
// stdin measures, and when a second one arrives prints "stats <heap in use before> <peak> <after
// a GC> <goroutines when serving and idle> <after>".
func TestServeChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("the serving side of TestThousandConcurrentRequests")
	}
	h := debugHandler(newNode(110))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Before the server starts: its goroutines are the Serve loop and ServeListener.
	serving := runtime.NumGoroutine() + 2
	go func() { done <- debughttp.ServeListener(ctx, ln, h, debughttp.Options{}) }()
	fmt.Printf("addr %s\n", ln.Addr())
	in := bufio.NewReader(os.Stdin)
	// Measured once every page has been served once, as a running agent's have.
	if _, err := in.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	// The warm-up's connections are closed.
	eventually(func() int { return runtime.NumGoroutine() }, serving)
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	stopSampling, peak := make(chan struct{}), make(chan uint64)
	go func() {
		var m runtime.MemStats
		var max uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			max = maxOf(max, m.HeapInuse)
			select {
			case <-tick.C:
			case <-stopSampling:
				peak <- max
				return
			}
		}
	}()
	fmt.Println("ready")
	if _, err := in.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	close(stopSampling)
	max := <-peak
	g1 := eventually(func() int { return runtime.NumGoroutine() }, serving)
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	fmt.Printf("stats %d %d %d %d %d\n", m0.HeapInuse, max, m1.HeapInuse, serving, g1)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// eventually polls get until it is at most want, for 5 s at most, and returns its last value.
func eventually(get func() int, want int) int {
	deadline := time.Now().Add(5 * time.Second)
	v := get()
	for v > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		v = get()
	}
	return v
}

// procKiB reads a field of /proc/<pid>/status, in KiB (0 where there is none).
func procKiB(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func maxOf(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// Junk in the request line or headers is answered 4xx (a redirect to the cleaned path for dot
// segments, as net/http's mux does), never 5xx, and the listener goes on serving.
func TestJunkRequests(t *testing.T) {
	addr := serve(t, debugHandler(newNode(3)), debughttp.Options{MaxHeaderBytes: 8 << 10})
	long := strings.Repeat("a", 64<<10)
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"very long path", "GET /" + long + " HTTP/1.1\r\nHost: x\r\n\r\n", 431},
		{"huge header", "GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + long + "\r\n\r\n", 431},
		{"many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 4000) + "\r\n", 431},
		{"escaped NUL", "GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"escaped NUL in a pod name", "GET /debug/pods/shop/pay%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"raw NUL", "GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad escape", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"dot segments", "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 307},
		{"dot segments past a pod", "GET /debug/pods/../../debug/report HTTP/1.1\r\nHost: x\r\n\r\n", 307},
		{"relative path", "GET ../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"invalid UTF-8", "GET /\xff\xfe\xfd HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"invalid UTF-8 in a pod name", "GET /debug/pods/\xff/\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"junk method", "G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"other method", "DELETE /debug/report HTTP/1.1\r\nHost: x\r\n\r\n", 405},
		{"bad host", "GET / HTTP/1.1\r\nHost: a b\x7f\r\n\r\n", 400},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"bad version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(conn, tc.req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("got %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if code, _ := get(t, client(5*time.Second), "http://"+addr+"/debug/report"); code != http.StatusOK {
		t.Errorf("after the junk, /debug/report got %d, want 200", code)
	}
}

// A body over MaxBodyBytes is answered 413, whether its length is declared or it is chunked.
func TestBodyLimit(t *testing.T) {
	const max = 1 << 10
	addr := serve(t, debugHandler(newNode(3)), debughttp.Options{MaxBodyBytes: max})
	c := client(5 * time.Second)
	for _, tc := range []struct {
		name    string
		method  string
		size    int
		chunked bool
		want    int
	}{
		{"GET, a small body", http.MethodGet, 100, false, 200},
		{"GET, a body at the limit", http.MethodGet, max, false, 200},
		{"GET, a body over the limit", http.MethodGet, max + 1, false, 413},
		{"GET, a chunked body over the limit", http.MethodGet, 64 << 10, true, 413},
		{"POST, a small body", http.MethodPost, 100, false, 405},
		{"POST, a body over the limit", http.MethodPost, 1 << 20, false, 413},
		{"POST, a chunked body over the limit", http.MethodPost, 1 << 20, true, 413},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = strings.NewReader(strings.Repeat("x", tc.size))
			if tc.chunked {
				body = io.MultiReader(body) // no length known: sent chunked
			}
			req, err := http.NewRequest(tc.method, "http://"+addr+"/debug/report", body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil && tc.want == http.StatusRequestEntityTooLarge && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
				// The server answered 413 and closed while the client was still sending: the
				// client sees its write reset before it reads the answer. Rejected all the same.
				t.Logf("%s with a %d-byte body: %v", tc.method, tc.size, err)
				return
			}
			if err != nil {
				t.Fatalf("%s with a %d-byte body: %v", tc.method, tc.size, err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s with a %d-byte body (chunked %v) got %d, want %d", tc.method, tc.size, tc.chunked, resp.StatusCode, tc.want)
			}
		})
	}
}

// BenchmarkPages serves each page of a full node (110 pods, per-pod series) over loopback, one
// request at a time: what WriteTimeout must leave room for.
func BenchmarkPages(b *testing.B) {
	addr := serveBench(b, debugHandler(newNode(110)))
	c := &http.Client{Timeout: 10 * time.Second}
	for _, p := range []string{"/debug/report", "/metrics", "/", "/debug/pods/shop/pay-5", "/healthz"} {
		name := strings.TrimPrefix(p, "/")
		if name == "" {
			name = "page"
		}
		b.Run(name, func(b *testing.B) {
			var size int64
			for b.Loop() {
				resp, err := c.Get("http://" + addr + p)
				if err != nil {
					b.Fatal(err)
				}
				size, err = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("%s: %d, %v", p, resp.StatusCode, err)
				}
			}
			b.ReportMetric(float64(size), "bytes/page")
		})
	}
}

func serveBench(b *testing.B, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- debughttp.ServeListener(ctx, ln, h, debughttp.Options{}) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	return ln.Addr().String()
}
