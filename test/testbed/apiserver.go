package testbed

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// KubeAPIServerVersion is the k8s.io/kubernetes version test/setup.sh builds kube-apiserver from.
// Keep it in sync with KUBERNETES_VERSION in test/setup.sh.
const KubeAPIServerVersion = "v1.34.4"

// APIServer is a real kube-apiserver on loopback over Debian's etcd, with an admin token, an
// audit log (to count who wrote what), and Stop/Start to take it away and bring it back with
// its data.
type APIServer struct {
	URL        string
	Token      string
	Kubeconfig string
	AuditLog   string
	dir        string
	args       []string
	bin        string
	mu         sync.Mutex
	cmd        *exec.Cmd
}

// StartAPIServer starts etcd and kube-apiserver for the test; both stop when it ends. It skips
// (fails in CI) when not privileged or when test/setup.sh has not built kube-apiserver.
func StartAPIServer(tb testing.TB) *APIServer {
	tb.Helper()
	RequirePrivileged(tb)
	bin := filepath.Join(CacheDir(), "bin", "kube-apiserver-"+KubeAPIServerVersion)
	if _, err := os.Stat(bin); err != nil {
		skipOrFatal(tb, "testbed: kube-apiserver not built (%v): run test/setup.sh", err)
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		skipOrFatal(tb, "testbed: etcd not installed (Debian's etcd-server): run test/setup.sh")
	}
	dir := tb.TempDir()
	ports := freePorts(tb, 3)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	ec := exec.Command(etcd, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(ports[1]), "--log-level", "error")
	ec.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+os.Getenv("GOARCH"))
	elog, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		tb.Fatal(err)
	}
	ec.Stdout, ec.Stderr = elog, elog
	if err := ec.Start(); err != nil {
		tb.Fatalf("testbed: starting etcd: %v", err)
	}
	tb.Cleanup(func() { _ = ec.Process.Kill(); _ = ec.Wait(); elog.Close() })

	var tok [16]byte
	_, _ = rand.Read(tok[:])
	a := &APIServer{
		URL:      "https://127.0.0.1:" + strconv.Itoa(ports[2]),
		Token:    hex.EncodeToString(tok[:]),
		AuditLog: filepath.Join(dir, "audit.log"),
		dir:      dir,
		bin:      bin,
	}
	must := func(err error) {
		if err != nil {
			tb.Fatalf("testbed: api server: %v", err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(a.Token+",admin,admin,system:masters\n"), 0o600))
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	must(err)
	must(os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	must(err)
	must(os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600))
	must(os.WriteFile(filepath.Join(dir, "audit.yaml"), []byte(
		"apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n"), 0o600))
	a.args = []string{
		"--etcd-servers=" + etcdURL, "--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(ports[2]),
		"--advertise-address=127.0.0.1", "--cert-dir=" + filepath.Join(dir, "certs"),
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"), "--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24", "--endpoint-reconciler-type=none",
		"--audit-policy-file=" + filepath.Join(dir, "audit.yaml"), "--audit-log-path=" + a.AuditLog,
		"--audit-log-mode=blocking",
	}
	a.Kubeconfig = filepath.Join(dir, "kubeconfig")
	must(os.WriteFile(a.Kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: t, context: {cluster: t, user: admin}}]
current-context: t
`, a.URL, a.Token)), 0o600))
	must(a.Start(context.Background()))
	tb.Cleanup(func() { _ = a.Stop() })
	return a
}

// Start starts kube-apiserver (again) and waits until it is ready.
func (a *APIServer) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(a.dir, "kube-apiserver.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.bin, a.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting kube-apiserver: %w", err)
	}
	a.cmd = cmd
	go func() { _ = cmd.Wait(); logf.Close() }()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // loopback test server with a self-signed cert
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+a.Token)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after 60s; see %s", filepath.Join(a.dir, "kube-apiserver.log"))
}

// Stop stops kube-apiserver (etcd keeps running, so Start brings the same objects back).
func (a *APIServer) Stop() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return nil
	}
	_ = a.cmd.Process.Kill()
	for i := 0; i < 100 && a.cmd.ProcessState == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	a.cmd = nil
	return nil
}

// AuditEvent is what the test bed reads from one audit log line.
type AuditEvent struct {
	Verb       string `json:"verb"`
	UserAgent  string `json:"userAgent"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// Requests returns the requests whose user agent starts with agentPrefix, from the audit log.
func (a *APIServer) Requests(agentPrefix string) ([]AuditEvent, error) {
	f, err := os.Open(a.AuditLog)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e AuditEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if strings.HasPrefix(e.UserAgent, agentPrefix) {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// Writes returns the write requests (create, update, patch, delete) whose user agent starts with
// agentPrefix, from the audit log.
func (a *APIServer) Writes(agentPrefix string) ([]AuditEvent, error) {
	all, err := a.Requests(agentPrefix)
	var out []AuditEvent
	for _, e := range all {
		switch e.Verb {
		case "create", "update", "patch", "delete", "deletecollection":
			out = append(out, e)
		}
	}
	return out, err
}

func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// PromtoolVersion is the Prometheus version test/setup.sh builds promtool from (it lints the
// agent's exposition). Keep it in sync with PROMTOOL_VERSION in test/setup.sh.
const PromtoolVersion = "v0.316.0"
