package proxyready

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// This file runs Istio's own pilot-agent as a pod's istio-proxy does (`pilot-agent proxy
// sidecar`), inside a test bed namespace, so that the status server meshdoctor probes on 15020 is
// Istio's: its routes, its readiness logic, its answers and its log lines. Envoy is the one part
// that cannot run here, so two stand-ins take its place, and are named as such:
//
//   - standInEnvoyBinary: the program pilot-agent starts as Envoy (ProxyConfig.binaryPath). It
//     only sleeps, so that pilot-agent keeps running as it does while its Envoy lives.
//   - envoyAdminStandIn: Envoy's admin port, 127.0.0.1:15000 in the pod, which pilot-agent's
//     readiness check reads (GET /stats?usedonly&filter=…, lines "name: value"). It answers the
//     stats a real Envoy reports before it has configuration (none: cds and lds have no successful
//     update) or once it is live (update_success 1, server.state 0 = LIVE, workers_started 1).
//
// Everything else is Istio's: pilot-agent decides readiness and writes the reason to its log.

// adminMode is what the stand-in Envoy admin reports.
type adminMode int32

const (
	// adminNoXDS: Envoy is up but istiod never sent configuration.
	adminNoXDS adminMode = iota
	// adminLive: Envoy has its configuration and serves.
	adminLive
)

// envoyAdminStandIn is a stand-in for Envoy's admin port inside a pod namespace.
type envoyAdminStandIn struct {
	mode atomic.Int32
	srv  *http.Server
}

// startEnvoyAdminStandIn listens on 127.0.0.1:15000 inside the namespace (the socket is made on a
// thread in the namespace and stays there) and serves from the test process.
func startEnvoyAdminStandIn(t testing.TB, netnsPath string, mode adminMode) *envoyAdminStandIn {
	t.Helper()
	var ln net.Listener
	err := innetns.Do(t.Context(), netnsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:15000")
		return err
	})
	if err != nil {
		t.Fatalf("stand-in Envoy admin: %v", err)
	}
	a := &envoyAdminStandIn{}
	a.mode.Store(int32(mode))
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		if adminMode(a.mode.Load()) == adminNoXDS {
			return // usedonly: counters never incremented are not listed
		}
		filter := r.URL.Query().Get("filter")
		switch {
		case strings.Contains(filter, "update_success"):
			w.Write([]byte("cluster_manager.cds.update_rejected: 0\ncluster_manager.cds.update_success: 1\n" +
				"listener_manager.lds.update_rejected: 0\nlistener_manager.lds.update_success: 1\n"))
		case strings.Contains(filter, "server"):
			w.Write([]byte("listener_manager.workers_started: 1\nserver.state: 0\n"))
		}
	})
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

func (a *envoyAdminStandIn) set(m adminMode) { a.mode.Store(int32(m)) }

// agentRun is pilot-agent running as istio-proxy in a test bed namespace.
type agentRun struct {
	ns  *testbed.Netns
	cmd *exec.Cmd
	out *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// istioSource is the Istio module pilot-agent was built from (test/setup.sh), where its Envoy
// bootstrap template is.
func istioSource(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "istio.io", "istio@"+testbed.PilotAgentVersion)
	if _, err := os.Stat(filepath.Join(dir, bootstrapTemplate)); err != nil {
		skipOrFail(t, "Istio's source is not in the module cache (%v): run test/setup.sh", err)
	}
	return dir
}

// bootstrapTemplate is Envoy's bootstrap template in Istio's source, which the proxy image
// carries as /var/lib/istio/envoy/envoy_bootstrap_tmpl.json.
const bootstrapTemplate = "tools/packaging/common/envoy_bootstrap.json"

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// startPilotAgent runs `pilot-agent proxy sidecar` in the namespace with what it needs from a pod:
// the pod's identity in its environment, a root certificate where the injector mounts istiod's
// CA bundle, and a ProxyConfig (PROXY_CONFIG, as the proxy.istio.io/config annotation reaches it)
// that points Envoy at the stand-in and istiod at a closed port of the pod's loopback (istiod is
// not running). It returns once the status port listens.
func startPilotAgent(t testing.TB, ns *testbed.Netns) *agentRun {
	t.Helper()
	pilotAgent := testbed.PilotAgent(t)
	dir := t.TempDir()
	writeRootCert(t, filepath.Join(dir, "var/run/secrets/istio/root-cert.pem"))
	envoy := filepath.Join(dir, "standin-envoy")
	if err := os.WriteFile(envoy, []byte("#!/bin/sh\n# Stand-in for Envoy: pilot-agent keeps running while its Envoy lives.\nexec sleep infinity\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	pc, err := json.Marshal(map[string]any{
		"binaryPath":                 envoy,
		"proxyBootstrapTemplatePath": filepath.Join(istioSource(t), bootstrapTemplate),
		"discoveryAddress":           "127.0.0.1:15012",
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, pilotAgent, "proxy", "sidecar")
	cmd.Dir = dir
	cmd.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"POD_NAME=app-7d9", "POD_NAMESPACE=shop", "INSTANCE_IP=" + ns.IPv4.Addr().String(),
		"SERVICE_ACCOUNT=default", "PROXY_CONFIG=" + string(pc),
	}
	run := &agentRun{ns: ns, cmd: cmd, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = run.out, run.out
	// Its own process group, so that the stand-in Envoy it starts goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting pilot-agent: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	// pilot-agent runs its package inits before it logs anything: with the other packages' tests
	// sharing a 2-CPU machine that once took over 20 s (CI). The wait is a bound, not a measure.
	deadline := time.Now().Add(90 * time.Second)
	for {
		p, err := NetnsProber{Timeout: time.Second}.Probe(t.Context(), ns.Path(), DefaultStatusPort)
		if err != nil {
			t.Fatal(err)
		}
		if p.Outcome != OutcomeRefused {
			break
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("pilot-agent's status port did not open:\n%s", run.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return run
}

// waitLine waits until pilot-agent has logged a line containing s and returns the line: what the
// container runtime writes to istio-proxy's log as one message.
func (a *agentRun) waitLine(t testing.TB, s string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for line := range strings.Lines(a.out.String()) {
			if strings.Contains(line, s) {
				return strings.TrimRight(line, "\n")
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pilot-agent did not log %q:\n%s", s, a.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restamp replaces the timestamp pilot-agent put at the head of a log line: the line as it would
// read at another time.
func restamp(line string, at time.Time) string {
	if _, rest, ok := strings.Cut(line, "\t"); ok {
		return at.UTC().Format("2006-01-02T15:04:05.000000Z") + "\t" + rest
	}
	return line
}

func writeRootCert(t testing.TB, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stand-in root CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}
