package proxyready

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/logscan"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

var update = flag.Bool("update", false, "rewrite the expected findings under testdata/")

// t0 is when the scenarios' pod was created on the node.
var t0 = time.Date(2026, 8, 27, 12, 0, 0, 0, time.UTC)

const podUID = "5f0c2b7e-4a1d-4c3e-9b8a-2d6f1e0a9c41"

// proxyMode is what answers on the pod's status port.
type proxyMode int

const (
	// proxyNone: nothing listens on 15020.
	proxyNone proxyMode = iota
	// proxyNoXDS: Istio's pilot-agent, its Envoy (stand-in) never configured by istiod.
	proxyNoXDS
	// proxyLive: Istio's pilot-agent, its Envoy (stand-in) configured and live.
	proxyLive
	// proxyHangs: a stand-in status server that accepts and never answers.
	proxyHangs
)

// logEvent is a readiness line of pilot-agent's at a time after t0.
type logEvent struct {
	at    time.Duration
	ready bool
}

type scenario struct {
	name  string
	proxy proxyMode
	// bare makes the target a --netns one: no containers, no pod identity.
	bare        bool
	annotations map[string]string
	// nativeSidecar puts istio-proxy among the injector's init containers.
	nativeSidecar bool
	proxyStart    time.Duration
	proxyAttempt  uint32
	proxyState    nodecheck.ContainerState
	proxyExit     int32
	appStart      time.Duration
	// proxyLog is what pilot-agent logged about readiness in this run of istio-proxy.
	proxyLog []logEvent
	// appRefused is when the app logged a refused connection (0: never).
	appRefused time.Duration
	now        time.Duration
	// istiodDown puts istiod's loss of the API server in the node's logs, within its quiet period.
	istiodDown bool
}

var holdAnnotations = map[string]string{istiopod.AnnotationProxyConfig: "holdApplicationUntilProxyStarts: true\n"}

func scenarios() []scenario {
	s := 1000 * time.Millisecond
	return []scenario{
		{name: "ready", proxy: proxyLive, annotations: holdAnnotations,
			proxyStart: 1 * s, proxyLog: []logEvent{{1500 * time.Millisecond, false}, {2500 * time.Millisecond, true}},
			appStart: 2600 * time.Millisecond, now: 10 * time.Minute},
		{name: "ready-bare-netns", proxy: proxyLive, bare: true},
		{name: "not-ready-xds", proxy: proxyNoXDS, istiodDown: true,
			appStart: 1 * s, proxyStart: 1050 * time.Millisecond,
			proxyLog: []logEvent{{2 * s, false}, {5 * time.Minute, false}}, now: 5 * time.Minute},
		{name: "not-ready-xds-young", proxy: proxyNoXDS,
			appStart: 1 * s, proxyStart: 1050 * time.Millisecond, proxyLog: []logEvent{{3 * s, false}}, now: 6 * s},
		{name: "refused", proxy: proxyNone,
			appStart: 1 * s, proxyStart: 1050 * time.Millisecond, now: 3 * time.Minute},
		{name: "refused-proxy-exited", proxy: proxyNone,
			appStart: 1 * s, proxyStart: 150 * s, proxyAttempt: 4, proxyState: nodecheck.ContainerExited, proxyExit: 255,
			now: 3 * time.Minute},
		{name: "refused-bare-netns", proxy: proxyNone, bare: true},
		{name: "timeout", proxy: proxyHangs,
			appStart: 1 * s, proxyStart: 1050 * time.Millisecond, now: 3 * time.Minute},
		{name: "app-before-proxy-unprotected", proxy: proxyLive,
			appStart: 1 * s, proxyStart: 1050 * time.Millisecond,
			proxyLog:   []logEvent{{1500 * time.Millisecond, false}, {3 * s, true}},
			appRefused: 1200 * time.Millisecond, now: 10 * time.Minute},
		{name: "app-before-proxy-unprotected-no-evidence", proxy: proxyLive,
			appStart: 1 * s, proxyStart: 1050 * time.Millisecond, proxyLog: []logEvent{{3 * s, true}}, now: 10 * time.Minute},
		{name: "app-before-proxy-native-sidecar", proxy: proxyLive, nativeSidecar: true,
			proxyStart: 1 * s, appStart: 1200 * time.Millisecond,
			proxyLog:   []logEvent{{1500 * time.Millisecond, false}, {3 * s, true}},
			appRefused: 1300 * time.Millisecond, now: 10 * time.Minute},
		{name: "app-before-proxy-hold", proxy: proxyLive, annotations: holdAnnotations,
			proxyStart: 1 * s, appStart: 1100 * time.Millisecond,
			proxyLog:   []logEvent{{1500 * time.Millisecond, false}, {3 * s, true}},
			appRefused: 1200 * time.Millisecond, now: 10 * time.Minute},
		{name: "proxy-restarted-native-sidecar", proxy: proxyLive, nativeSidecar: true,
			proxyStart: 4 * time.Minute, proxyAttempt: 1, appStart: 1200 * time.Millisecond,
			proxyLog: []logEvent{{4*time.Minute + 500*time.Millisecond, false}, {4*time.Minute + 2*s, true}},
			now:      10 * time.Minute},
	}
}

// TestScenarios runs the check on real pod network namespaces, with Istio's capture rules
// written by pilot-agent as istio-init does, Istio's pilot-agent serving the status port, log
// lines written by pilot-agent and by a real program refused by the pod's capture, and compares
// the findings with testdata/<scenario>.json.
func TestScenarios(t *testing.T) {
	testbed.RequirePrivileged(t)
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			got := runScenario(t, sc)
			want := filepath.Join("testdata", sc.name+".json")
			if *update {
				if err := os.WriteFile(want, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("result differs from %s:\n--- got\n%s--- want\n%s", want, got, exp)
			}
		})
	}
}

// scenarioPod is a scenario's pod on the test bed.
type scenarioPod struct {
	ns        *testbed.Netns
	podLogDir string
	// notReadyLine and readyLine are pilot-agent's own lines from this run.
	notReadyLine, readyLine, openedLine string
}

func runScenario(t *testing.T, sc scenario) []byte {
	ctx := t.Context()
	ns := testbed.NewNetns(t, testbed.IPv4Only())
	if err := ns.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	p := &scenarioPod{ns: ns, podLogDir: filepath.Join(t.TempDir(), "var/log/pods")}
	switch sc.proxy {
	case proxyNoXDS, proxyLive:
		admin := startEnvoyAdminStandIn(t, ns.Path(), adminNoXDS)
		agent := startPilotAgent(t, ns)
		p.openedLine = agent.waitLine(t, "Opening status port")
		if _, err := (NetnsProber{}).Probe(ctx, ns.Path(), DefaultStatusPort); err != nil {
			t.Fatal(err)
		}
		p.notReadyLine = agent.waitLine(t, "Envoy proxy is NOT ready:")
		if sc.proxy == proxyLive {
			admin.set(adminLive)
			// pilot-agent may answer one more probe from what it last saw of Envoy: wait for it
			// to see the live admin.
			testbed.Eventually(t, 10*time.Second, "pilot-agent ready with a live Envoy", func() error {
				probe, err := (NetnsProber{}).Probe(ctx, ns.Path(), DefaultStatusPort)
				if err == nil && probe.Outcome != OutcomeReady {
					err = fmt.Errorf("%+v\n%s", probe, agent.out.String())
				}
				return err
			})
			p.readyLine = agent.waitLine(t, "Envoy proxy is ready")
		}
	case proxyHangs:
		startHangingStandIn(t, ns.Path())
	}

	target := nodecheck.Target{Netns: ns.Path(), Annotations: map[string]string{}}
	for k, v := range sc.annotations {
		target.Annotations[k] = v
	}
	if !sc.bare {
		p.writeLogs(t, sc)
		target = podTarget(sc, target)
	}
	cfg := Config{
		Prober:    NetnsProber{Timeout: time.Second},
		PodLogDir: p.podLogDir,
		Now:       func() time.Time { return t0.Add(sc.now) },
	}
	if sc.istiodDown {
		cfg.Conditions = istiodDownScanner(t, p.podLogDir, t0.Add(sc.now))
	}
	chk, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := chk.Check(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	return goldenJSON(t, res, p.podLogDir)
}

// podTarget is the scenario's pod as discovery hands it over.
func podTarget(sc scenario, t nodecheck.Target) nodecheck.Target {
	t.Namespace, t.Name, t.UID = "shop", "app-7d9", podUID
	status := `{"initContainers":["istio-init"],"containers":["istio-proxy"]}`
	if sc.nativeSidecar {
		status = `{"initContainers":["istio-init","istio-proxy"],"containers":null}`
	}
	t.Annotations[istiopod.AnnotationSidecarStatus] = status
	proxyState := sc.proxyState
	if proxyState == "" {
		proxyState = nodecheck.ContainerRunning
	}
	proxy := nodecheck.Container{Name: istiopod.ContainerIstioProxy, ID: "c-proxy", Role: nodecheck.RoleSidecar,
		State: proxyState, Attempt: sc.proxyAttempt, CreatedAt: t0.Add(sc.proxyStart - 20*time.Millisecond),
		StartedAt: t0.Add(sc.proxyStart), UID: 1337, GID: 1337}
	if proxyState == nodecheck.ContainerExited {
		proxy.ExitCode, proxy.Reason, proxy.FinishedAt = sc.proxyExit, "Error", t0.Add(sc.proxyStart+2*time.Second)
	}
	t.Containers = []nodecheck.Container{
		{Name: istiopod.ContainerIstioInit, ID: "c-init", Role: nodecheck.RoleInit, State: nodecheck.ContainerExited,
			CreatedAt: t0, StartedAt: t0.Add(200 * time.Millisecond), FinishedAt: t0.Add(600 * time.Millisecond),
			UID: 0, GID: 0},
		proxy,
		{Name: "app", ID: "c-app", Role: nodecheck.RoleApp, State: nodecheck.ContainerRunning,
			CreatedAt: t0.Add(sc.appStart - 20*time.Millisecond), StartedAt: t0.Add(sc.appStart), UID: 1000, GID: 1000},
	}
	return t
}

// writeLogs writes istio-proxy's and the app's logs as containerd writes them for kubelet.
func (p *scenarioPod) writeLogs(t *testing.T, sc scenario) {
	dir := filepath.Join(p.podLogDir, "shop_app-7d9_"+podUID)
	var proxyLines []criLine
	if p.openedLine != "" {
		at := t0.Add(sc.proxyStart + 10*time.Millisecond)
		proxyLines = append(proxyLines, criLine{at, restamp(p.openedLine, at)})
	}
	for _, e := range sc.proxyLog {
		line := p.notReadyLine
		if e.ready {
			line = p.readyLine
		}
		if line == "" {
			t.Fatalf("scenario %s logs a readiness line its proxy never wrote", sc.name)
		}
		at := t0.Add(e.at)
		proxyLines = append(proxyLines, criLine{at, restamp(line, at)})
	}
	writeCRILog(t, filepath.Join(dir, "istio-proxy", fmt.Sprintf("%d.log", sc.proxyAttempt)), proxyLines)

	appLines := []criLine{{t0.Add(sc.appStart + 5*time.Millisecond), "starting the cart service"}}
	if sc.appRefused > 0 {
		appLines = append(appLines, criLine{t0.Add(sc.appRefused), p.refusedByCapture(t)})
	}
	writeCRILog(t, filepath.Join(dir, "app", "0.log"), appLines)
}

// refusedByCapture is what an app logs when its first request meets the pod's capture with no
// proxy listening: a Go client in the pod's namespace connects to a Service address, Istio's
// rules redirect it to 127.0.0.1:15001, and nothing listens there. The error is the kernel's
// answer through the real rules; the words around it are the app's.
func (p *scenarioPod) refusedByCapture(t *testing.T) string {
	ctx := t.Context()
	if _, err := p.ns.Exec(ctx, "ip", "route", "replace", "default", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	var dialErr error
	if err := innetns.Do(ctx, p.ns.Path(), func() error {
		c, err := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", "10.96.12.7:8080")
		if err == nil {
			c.Close()
		}
		dialErr = err
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(dialErr, syscall.ECONNREFUSED) {
		t.Fatalf("a request through the capture with no proxy: want connection refused, got %v", dialErr)
	}
	return fmt.Sprintf("level=error msg=\"loading the catalogue failed\" err=\"Get \\\"http://inventory:8080/stock\\\": %v\"", dialErr)
}

type criLine struct {
	at  time.Time
	msg string
}

// writeCRILog writes "<RFC3339Nano> stdout F <message>" lines, as containerd's CRI logger does.
func writeCRILog(t testing.TB, path string, lines []criLine) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s stdout F %s\n", l.at.UTC().Format(time.RFC3339Nano), l.msg)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o640); err != nil {
		t.Fatal(err)
	}
}

// istiodDownScanner is the log engine with its default rules after a pass over a node whose
// istiod logged the guide's error two minutes ago.
func istiodDownScanner(t *testing.T, podLogDir string, now time.Time) NodeConditions {
	dir := filepath.Join(podLogDir, "istio-system_istiod-5d8f7c9b6-x2k4q_0b6e1c9a-7f3d-4e2b-8a1c-5d9e2f4b7a60", "discovery")
	writeCRILog(t, filepath.Join(dir, "0.log"), []criLine{{now.Add(-2 * time.Minute),
		"error k8s.io/client-go@v0.18.0/tools/cache/reflector.go:125: Failed to watch *crd.IstioSomeCustomResource`…dial tcp 10.43.240.1:443: connect: connection refused"}})
	rules, err := logscan.DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := logscan.New(logscan.Config{PodLogDir: podLogDir, Rules: rules, Since: 30 * time.Minute,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Close)
	if _, err := sc.Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	return sc
}

// startHangingStandIn is a stand-in status server that accepts connections on 15020 in the pod
// and never answers: a proxy too busy to answer its probe.
func startHangingStandIn(t *testing.T, netnsPath string) {
	ln := testbed.ListenIn(t, netnsPath, "tcp4", "127.0.0.1:15020")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
}

var ephemeralPort = regexp.MustCompile(`127\.0\.0\.1:\d+->`)

// goldenJSON renders what a scenario is judged on, with the test's temporary paths and the
// kernel's ephemeral ports replaced.
func goldenJSON(t *testing.T, res nodecheck.Result, podLogDir string) []byte {
	d := res.Detail.(*Detail)
	out := struct {
		Skipped    string              `json:"skipped,omitempty"`
		Probe      map[string]any      `json:"probe,omitempty"`
		Note       string              `json:"note,omitempty"`
		Protection *PodProtection      `json:"protection,omitempty"`
		Findings   []nodecheck.Finding `json:"findings"`
	}{Skipped: d.Skipped, Note: d.Note, Protection: d.Protection, Findings: res.Findings}
	if d.Probe != nil {
		out.Probe = probeEvidence(*d.Probe)
	}
	if out.Findings == nil {
		out.Findings = []nodecheck.Finding{}
	}
	if len(d.LogErrors) > 0 {
		t.Errorf("log errors: %v", d.LogErrors)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	b = bytes.ReplaceAll(b, []byte(podLogDir), []byte("/var/log/pods"))
	return ephemeralPort.ReplaceAll(b, []byte("127.0.0.1:PORT->"))
}
