// Package cluster_test runs the real `meshdoctor cluster` command (and the same binary as
// kubectl's plugin) against a real kube-apiserver whose pod proxy reaches real meshdoctor agents.
//
// How the API server's proxy reaches the agents: each test node is a network namespace the test
// creates (testbed.NewNetns), joined to the host's by a veth pair of its own with a /30 from
// 198.18.0.0/15 (RFC 2544's benchmarking range, unused on the test machine, which checks it), one
// address on the host end and one inside. The agent (the real binary) runs inside the namespace,
// as a host-network DaemonSet pod runs in the node's, with --report-address on the inside
// address; its Pod object is host-network and has that address as status.podIP, which the API
// server's proxy refuses only for loopback, link-local and multicast addresses. Traffic goes only
// to loopback (the API server) and to those namespaces.
package cluster_test

import (
	"context"
	"crypto/rand"
	binenc "encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// binary is the meshdoctor under test: $MESHDOCTOR_BIN (make test sets it), else built here.
var binary string

var keep = flag.String("keep", "", "write the cluster command's outputs and the agents' reports to this directory (to refresh testdata by hand)")

func TestMain(m *testing.M) {
	flag.Parse()
	path, cleanup, err := testbed.BuildMeshdoctor()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster e2e: %v\n", err)
		os.Exit(2)
	}
	binary = path
	code := m.Run()
	cleanup()
	os.Exit(code)
}

const (
	agentNamespace = "meshdoctor"
	agentSelector  = "app.kubernetes.io/name=meshdoctor"
	reportPort     = 9811
	sidecarStatus  = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"revision":"default"}`
	cniStatus      = `{"initContainers":["istio-validation"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"revision":"default"}`
)

// testNode is a node of the test cluster: a network namespace linked to the host.
type testNode struct {
	name   string
	netns  *testbed.Netns
	addr   netip.Addr // inside: the node's (and its host-network agent pod's) IP
	hostIP netip.Addr // the host end
}

// linkedNode makes a namespace for a node and links it to the host (see the package doc).
func linkedNode(t *testing.T, ctx context.Context, name string) *testNode {
	t.Helper()
	n := &testNode{name: name, netns: testbed.NewNetns(t)}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	hostEnd := "mdh-" + hex.EncodeToString(r[:])
	var base netip.Addr
	for range 20 {
		var b [2]byte
		_, _ = rand.Read(b[:])
		off := uint32(binenc.BigEndian.Uint16(b[:])>>1) * 4 // a /30 within the /15
		a := binenc.BigEndian.Uint32([]byte{198, 18, 0, 0}) + off
		cand := netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
		if !hostUses(t, netip.PrefixFrom(cand, 30)) {
			base = cand
			break
		}
	}
	if !base.IsValid() {
		t.Fatal("no free /30 in 198.18.0.0/15 on this host")
	}
	n.hostIP, n.addr = base.Next(), base.Next().Next()
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostEnd).Run() })
	for _, args := range [][]string{
		{"link", "add", hostEnd, "type", "veth", "peer", "name", "eth1", "netns", n.netns.Name},
		{"addr", "add", n.hostIP.String() + "/30", "dev", hostEnd},
		{"link", "set", hostEnd, "up"},
		{"-n", n.netns.Name, "addr", "add", n.addr.String() + "/30", "dev", "eth1"},
		{"-n", n.netns.Name, "link", "set", "eth1", "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	return n
}

// hostUses reports whether an address of the host's falls in p.
func hostUses(t *testing.T, p netip.Prefix) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && p.Contains(ip.Unmap()) {
				return true
			}
		}
	}
	return false
}

// silent listens on the node's report port and never answers: busybox's nc, as a persistent
// server, hands each connection to a sleep. They run in a process group of their own, which the
// cleanup kills whole.
func silent(t *testing.T, n *testNode) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox not installed (busybox-static): run test/setup.sh")
	}
	cmd := exec.Command("nsenter", "--net="+n.netns.Path(), bb, "nc", "-ll", "-p", strconv.Itoa(reportPort), "-e", bb, "sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	testbed.Eventually(t, 10*time.Second, "nc listening on "+n.name, func() error {
		out, err := exec.Command("nsenter", "--net="+n.netns.Path(), "ss", "-Htln", "sport", "= :"+strconv.Itoa(reportPort)).Output()
		if err == nil && len(strings.TrimSpace(string(out))) == 0 {
			err = fmt.Errorf("no listener yet")
		}
		return err
	})
}

// agentProc is an agent running inside a node's namespace.
type agentProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs strings.Builder
	done chan error
}

func (a *agentProc) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.logs.Write(p)
}

// startAgent runs `meshdoctor agent` in the node's namespace with its report on the node's
// address, and waits until it has swept the node once.
func startAgent(t *testing.T, n *testNode, podLogDir string, args ...string) {
	t.Helper()
	hostRoot := t.TempDir()
	for _, d := range []string{"etc/cni/net.d", "opt/cni/bin"} {
		if err := os.MkdirAll(filepath.Join(hostRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	metrics := net.JoinHostPort(n.addr.String(), "9809")
	all := append([]string{"--net=" + n.netns.Path(), binary, "agent", "--kubeconfig=none", "--node-name", n.name,
		"--report-address", net.JoinHostPort(n.addr.String(), strconv.Itoa(reportPort)),
		"--metrics-address", metrics, "--debug-address", "", "--node-backend", "none", "--state-dir", t.TempDir(),
		"--cni-conf-dir", filepath.Join(hostRoot, "etc/cni/net.d"), "--cni-bin-dir", filepath.Join(hostRoot, "opt/cni/bin"),
		"--pod-log-dir", podLogDir, "--log-format", "text"}, args...)
	a := &agentProc{done: make(chan error, 1)}
	a.cmd = exec.Command("nsenter", all...)
	a.cmd.Stdout, a.cmd.Stderr = a, a
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.done
		if t.Failed() {
			a.mu.Lock()
			t.Logf("agent %s logs:\n%s", n.name, a.logs.String())
			a.mu.Unlock()
		}
	})
	testbed.Eventually(t, 60*time.Second, "agent on "+n.name+" ready", func() error {
		code, body, err := testbed.HTTPGet("http://" + metrics + "/readyz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("readyz %d: %s", code, body)
		}
		return err
	})
}

// istiodLogs writes, under a pod log directory, an istiod container log with the errors istiod
// logs when it loses the API server, as kubelet's CRI log format keeps them.
func istiodLogs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "discovery", "0.log")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := range 3 {
		at := time.Now().Add(time.Duration(i-3) * time.Minute).UTC()
		fmt.Fprintf(&b, "%s stderr F %s\terror\tklog\tfailed to list *v1.Pod: Get \"https://10.96.0.1:443/api/v1/pods?limit=500&resourceVersion=0\": "+
			"dial tcp 10.96.0.1:443: connect: connection refused: Failed to watch\treflector=k8s.io/client-go/informers/factory.go:160 type=*v1.Pod\n",
			at.Format(time.RFC3339Nano), at.Format("2006-01-02T15:04:05.000000Z"))
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// injectedSpec is a pod spec as Istio's sidecar injector writes it, on a node: istio-init with
// the capabilities iptables needs, istio-proxy, the app. cni puts istio-validation (CNI mode)
// instead of istio-init.
func injectedSpec(node string, cni bool) corev1.PodSpec {
	f, tr := false, true
	root, proxy := int64(0), int64(1337)
	init := corev1.Container{Name: "istio-init", Image: "docker.io/istio/proxyv2:1.27.0",
		Args: append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: &f, Privileged: &f, ReadOnlyRootFilesystem: &f,
			RunAsGroup: &root, RunAsNonRoot: &f, RunAsUser: &root,
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}},
		}}
	if cni {
		init = corev1.Container{Name: "istio-validation", Image: "docker.io/istio/proxyv2:1.27.0",
			Args: []string{"istio-iptables", "--run-validation", "--skip-rule-apply"},
			SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &f, RunAsGroup: &proxy, RunAsNonRoot: &tr, RunAsUser: &proxy,
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}
	}
	return corev1.PodSpec{
		NodeName:       node,
		InitContainers: []corev1.Container{init},
		Containers: []corev1.Container{
			{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.27.0", Args: []string{"proxy", "sidecar"},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &f, RunAsGroup: &proxy, RunAsNonRoot: &tr, RunAsUser: &proxy,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}},
			{Name: "app", Image: "registry.example/shop/app:1"},
		},
	}
}

// runtimePod is the same pod as the node runs it: istio-init writing the rules with Istio's own
// tool (with or without its capabilities), a stand-in proxy answering readiness, an app.
func runtimePod(ns, name, uid string, caps bool) kubelet.Pod {
	init := kubelet.Container{Name: "istio-init", Args: append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
		RunAsUser: kubelet.Int64(0), RunAsGroup: kubelet.Int64(0), CapDrop: []string{"ALL"}}
	if caps {
		init.CapAdd = []string{"NET_ADMIN", "NET_RAW"}
	}
	return kubelet.Pod{
		Namespace: ns, Name: name, UID: uid,
		Annotations:    map[string]string{"sidecar.istio.io/status": sidecarStatus},
		InitContainers: []kubelet.Container{init},
		Containers: []kubelet.Container{
			kubelet.IstioProxy(),
			kubelet.App(),
		},
	}
}

// cluster is the test cluster's API side.
type cluster struct {
	t   *testing.T
	ctx context.Context
	api *testbed.APIServer
	kc  kubernetes.Interface
}

func (c *cluster) must(_ any, err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) namespace(name string, labels map[string]string) {
	c.t.Helper()
	c.must(c.kc.CoreV1().Namespaces().Create(c.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}))
	// No controller-manager: the default ServiceAccount pods need is made here.
	c.must(c.kc.CoreV1().ServiceAccounts(name).Create(c.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
}

// agentPod registers a node's agent pod as the DaemonSet makes it: host network, the report
// port named; ip "" leaves it Pending without an IP.
func (c *cluster) agentPod(node string, ip netip.Addr) { c.agentPodNamed("meshdoctor-"+node, node, ip) }

func (c *cluster) agentPodNamed(name, node string, ip netip.Addr) {
	c.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: name,
			Labels: map[string]string{"app.kubernetes.io/name": "meshdoctor", "app.kubernetes.io/instance": "meshdoctor"}},
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: true, Containers: []corev1.Container{{
			Name: "agent", Image: "ghcr.io/meshdoctor/meshdoctor:test", Args: []string{"agent"},
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9809}, {Name: "report", ContainerPort: reportPort}},
		}}},
	}
	p, err := c.kc.CoreV1().Pods(agentNamespace).Create(c.ctx, p, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	if !ip.IsValid() {
		return
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
		HostIP: ip.String(), HostIPs: []corev1.HostIP{{IP: ip.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
	c.must(c.kc.CoreV1().Pods(agentNamespace).UpdateStatus(c.ctx, p, metav1.UpdateOptions{}))
}

// refusedByPodSecurity does what the ReplicaSet controller does when its namespace's Pod Security
// level forbids its template: it creates the pod, the API server (its real PodSecurity admission)
// refuses it, and the controller records a FailedCreate Warning on the ReplicaSet ("Error
// creating: " and the API's error), whose count grows as it retries. It returns the message.
func (c *cluster) refusedByPodSecurity(ns string) string {
	c.t.Helper()
	labels := map[string]string{"app": "web", "pod-template-hash": "7c9d8f6b5"}
	spec := injectedSpec("", false)
	rs, err := c.kc.AppsV1().ReplicaSets(ns).Create(c.ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-7c9d8f6b5", Labels: labels},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels,
				Annotations: map[string]string{"sidecar.istio.io/status": sidecarStatus}}, Spec: spec}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: rs.Name + "-", Namespace: ns, Labels: labels,
		Annotations:     map[string]string{"sidecar.istio.io/status": sidecarStatus},
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}},
		Spec: spec}
	_, err = c.kc.CoreV1().Pods(ns).Create(c.ctx, pod, metav1.CreateOptions{})
	if err == nil {
		c.t.Fatalf("the API server admitted an injected pod in namespace %s, whose Pod Security level is baseline", ns)
	}
	msg := "Error creating: " + err.Error()
	now := time.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", rs.Name, now.UnixNano()), Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "ReplicaSet", Namespace: ns, Name: rs.Name, UID: rs.UID,
			APIVersion: "apps/v1", ResourceVersion: rs.ResourceVersion},
		Reason: "FailedCreate", Message: msg, Type: corev1.EventTypeWarning, Count: 1,
		FirstTimestamp: metav1.NewTime(now.Add(-2 * time.Minute)), LastTimestamp: metav1.NewTime(now.Add(-2 * time.Minute)),
		Source: corev1.EventSource{Component: "replicaset-controller"}, ReportingController: "replicaset-controller",
	}
	ev, err = c.kc.CoreV1().Events(ns).Create(c.ctx, ev, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	// Two retries later: the recorder's correlator bumps the count and the last time.
	ev.Count, ev.LastTimestamp = 3, metav1.NewTime(now)
	c.must(c.kc.CoreV1().Events(ns).Update(c.ctx, ev, metav1.UpdateOptions{}))
	return msg
}

// chartViewerRoles creates, once, the ClusterRole and the Role of the Helm chart's clusterView
// (rendered by the real helm), and returns their names.
func (c *cluster) chartViewerRoles() (clusterRole, role string) {
	c.t.Helper()
	for _, doc := range strings.Split(string(testbed.RenderChart(c.t)), "\n---\n") {
		var meta struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			c.t.Fatalf("the chart's manifests: %v", err)
		}
		if !strings.HasSuffix(meta.Metadata.Name, "-cluster-viewer") {
			continue
		}
		switch meta.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
				c.t.Fatal(err)
			}
			if _, err := c.kc.RbacV1().ClusterRoles().Create(c.ctx, &r, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				c.t.Fatal(err)
			}
			clusterRole = r.Name
		case "Role":
			var r rbacv1.Role
			if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
				c.t.Fatal(err)
			}
			if r.Namespace != agentNamespace {
				c.t.Fatalf("the chart's viewer Role is in %s, the agents in %s", r.Namespace, agentNamespace)
			}
			if _, err := c.kc.RbacV1().Roles(r.Namespace).Create(c.ctx, &r, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				c.t.Fatal(err)
			}
			role = r.Name
		}
	}
	if clusterRole == "" || role == "" {
		c.t.Fatal("the chart has no cluster-viewer ClusterRole and Role")
	}
	return clusterRole, role
}

// reader makes a ServiceAccount bound to the roles the Helm chart ships for `meshdoctor cluster`
// (proxy says whether it gets the Role with pods/proxy on the agents too) and returns a kubeconfig
// with its token.
func (c *cluster) reader(name string, proxy bool) string {
	c.t.Helper()
	ctx, kc := c.ctx, c.kc
	c.must(kc.CoreV1().ServiceAccounts(agentNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}))
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: agentNamespace}}
	clusterRole, role := c.chartViewerRoles()
	c.must(kc.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: clusterRole}, Subjects: subject}, metav1.CreateOptions{}))
	if proxy {
		c.must(kc.RbacV1().RoleBindings(agentNamespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role}, Subjects: subject}, metav1.CreateOptions{}))
	}
	tr, err := kc.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, name, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	path := filepath.Join(c.t.TempDir(), name+".kubeconfig")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: %s, user: {token: %q}}]
contexts: [{name: t, context: {cluster: t, user: %s}}]
current-context: t
`, c.api.URL, name, tr.Status.Token, name)), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// clusterJSON is what the test reads of `meshdoctor cluster -o json`.
type clusterJSON struct {
	Nodes []struct {
		Node   string            `json:"node"`
		Status string            `json:"status"`
		Agent  string            `json:"agent"`
		Error  string            `json:"error"`
		Report *nodecheck.Report `json:"report"`
	} `json:"nodes"`
	Findings  []nodecheck.Finding `json:"findings"`
	APIServer struct {
		Endpoints []string `json:"endpoints"`
		Istiod    []struct {
			Name            string
			Replicas, Ready int32
		} `json:"istiod"`
	} `json:"apiServer"`
	IstioCNI string   `json:"istioCNI"`
	Notes    []string `json:"notes"`
	Summary  struct {
		Nodes map[string]int `json:"nodes"`
		Pods  map[string]int `json:"pods"`
	} `json:"summary"`
}

// run runs argv[0] (the binary, or a link to it) with args and returns stdout, stderr and the
// exit code.
func run(t *testing.T, ctx context.Context, env []string, argv ...string) (string, string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return out.String(), errOut.String(), code
}

// TestClusterThroughPodProxy: five nodes, two with agents that answer (one over real CRI pods,
// one over bare network namespaces with istiod's logs), one without an agent, one whose agent
// does not listen, one whose agent is not running; namespaces with injection and Pod Security
// labels; a ReplicaSet whose pods Pod Security refuses; a pod in CNI mode with no istio-cni; a
// single API server endpoint. `meshdoctor cluster`, with exactly the RBAC it documents, reads
// every report through the API server's proxy, names the root causes, exits 1, and writes nothing.
func TestClusterThroughPodProxy(t *testing.T) {
	api := testbed.StartAPIServer(t)
	kn := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WarningHandler = rest.NoWarnings{} // Pod Security's warnings on the ReplicaSets are expected
	c := &cluster{t: t, ctx: ctx, api: api, kc: kubernetes.NewForConfigOrDie(cfg)}

	nodeA, nodeB, nodeD, nodeF := linkedNode(t, ctx, "node-a"), linkedNode(t, ctx, "node-b"), linkedNode(t, ctx, "node-d"), linkedNode(t, ctx, "node-f")
	for _, n := range []string{"node-a", "node-b", "node-c", "node-d", "node-e", "node-f"} {
		c.must(c.kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}))
	}
	c.namespace(agentNamespace, map[string]string{"pod-security.kubernetes.io/enforce": "privileged"})
	c.namespace("istio-system", nil)
	c.namespace("shop", map[string]string{"istio-injection": "enabled"})
	c.namespace("secure", map[string]string{"istio-injection": "enabled", "pod-security.kubernetes.io/enforce": "baseline"})
	c.namespace("strict", map[string]string{"istio.io/rev": "default", "pod-security.kubernetes.io/enforce": "restricted"})
	c.namespace("mesh", map[string]string{"istio.io/rev": "default"})

	// node-a: real pods through CRI. shop/cart's istio-init has its capabilities; shop/pay's
	// spec asks for them but the runtime starts it without (something stripped them).
	for _, p := range []struct {
		name string
		caps bool
	}{{"cart", true}, {"pay", false}} {
		api, err := c.kc.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: p.name, Annotations: map[string]string{"sidecar.istio.io/status": sidecarStatus}},
			Spec:       injectedSpec("node-a", false)}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kn.RunPod(ctx, runtimePod("shop", p.name, string(api.UID), p.caps)); err != nil {
			t.Fatal(err)
		}
	}
	startAgent(t, nodeA, t.TempDir(), "--containerd-address", kn.Containerd.Address)
	c.agentPod("node-a", nodeA.addr)
	// A rollout: the DaemonSet's next pod on node-a is created but not running yet.
	c.agentPodNamed("meshdoctor-node-a-next", "node-a", netip.Addr{})

	// node-b: a namespace with Istio's rules, one without any, and istiod losing the API server
	// in its logs; a pod there relies on istio-cni (CNI mode), which runs nowhere.
	healthy, bare := testbed.NewNetns(t), testbed.NewNetns(t)
	if err := healthy.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	startAgent(t, nodeB, istiodLogs(t), "--netns", healthy.Path(), "--netns", bare.Path())
	c.agentPod("node-b", nodeB.addr)
	c.must(c.kc.CoreV1().Pods("mesh").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "api-0", Annotations: map[string]string{"sidecar.istio.io/status": cniStatus}},
		Spec:       injectedSpec("node-b", true)}, metav1.CreateOptions{}))

	// node-c has no agent; node-d's agent pod has an IP where nothing listens; node-e's is Pending;
	// node-f's accepts connections and never answers.
	c.agentPod("node-d", nodeD.addr)
	c.agentPod("node-e", netip.Addr{})
	silent(t, nodeF)
	c.agentPod("node-f", nodeF.addr)

	refusal, strict := c.refusedByPodSecurity("secure"), c.refusedByPodSecurity("strict")
	t.Logf("Pod Security's refusals, as the ReplicaSet controller records them:\n%s\n%s", refusal, strict)
	keepFile(t, "refusals.txt", refusal+"\n"+strict+"\n")

	// One API server behind the kubernetes Service, as its endpoint reconciler writes it; one istiod.
	https, port, ready := "https", int32(6443), true
	c.must(c.kc.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{"kubernetes.io/service-name": "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{nodeA.hostIP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &https, Port: &port}},
	}, metav1.CreateOptions{}))
	one := int32(1)
	istiod, err := c.kc.AppsV1().Deployments("istio-system").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Labels: map[string]string{"app": "istiod", "istio.io/rev": "default"}},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "istiod"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "istiod"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "docker.io/istio/pilot:1.27.0"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	istiod.Status = appsv1.DeploymentStatus{Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1}
	c.must(c.kc.AppsV1().Deployments("istio-system").UpdateStatus(ctx, istiod, metav1.UpdateOptions{}))

	// The report listener serves the report and nothing else.
	base := "http://" + net.JoinHostPort(nodeA.addr.String(), strconv.Itoa(reportPort))
	for path, want := range map[string]int{"/debug/report": 200, "/debug/pods/shop/pay": 404, "/metrics": 404, "/": 404} {
		if code, _, err := testbed.HTTPGet(base + path); err != nil || code != want {
			t.Errorf("report listener %s: %d %v, want %d", path, code, err, want)
		}
	}
	for _, n := range []*testNode{nodeA, nodeB} {
		_, body, err := testbed.HTTPGet("http://" + net.JoinHostPort(n.addr.String(), strconv.Itoa(reportPort)) + "/debug/report")
		if err != nil {
			t.Fatal(err)
		}
		keepFile(t, "agent-report-"+n.name+".json", body)
	}

	viewer := c.reader("meshdoctor-viewer", true)
	out, errOut, code := run(t, ctx, nil, binary, "cluster", "--kubeconfig", viewer, "-o", "json", "--timeout", "3s")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (error findings)\nstderr: %s\n%s", code, errOut, out)
	}
	keepFile(t, "cluster.json", out)
	if errOut != "" {
		t.Errorf("stderr is not a terminal, yet the command wrote to it: %q", errOut)
	}
	var got clusterJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("-o json is not JSON: %v\n%s", err, out)
	}
	statuses := map[string]string{}
	for _, n := range got.Nodes {
		statuses[n.Node] = n.Status
	}
	wantStatus := map[string]string{"node-a": "reported", "node-b": "reported", "node-c": "no-agent", "node-d": "not-answering",
		"node-e": "agent-not-running", "node-f": "not-answering"}
	for n, want := range wantStatus {
		if statuses[n] != want {
			t.Errorf("node %s: status %q, want %q", n, statuses[n], want)
		}
	}
	node := func(name string) (r struct {
		Error  string
		Report *nodecheck.Report
	}) {
		for _, n := range got.Nodes {
			if n.Node == name {
				r.Error, r.Report = n.Error, n.Report
			}
		}
		return r
	}
	for _, n := range got.Nodes {
		if n.Node == "node-a" && n.Agent != agentNamespace+"/meshdoctor-node-a" {
			t.Errorf("node-a read through %s, not its running agent", n.Agent)
		}
	}
	if e := node("node-d").Error; !strings.Contains(e, "connection refused") {
		t.Errorf("node-d's error does not say the agent refused the connection: %q", e)
	}
	if e := node("node-f").Error; !strings.Contains(e, "no answer within 3s") {
		t.Errorf("node-f's error does not say the agent did not answer in time: %q", e)
	}

	// shop/pay: the node saw istio-init without NET_ADMIN; the cluster adds why, first.
	verdicts := map[string]nodecheck.Verdict{}
	var pay *nodecheck.PodReport
	for _, name := range []string{"node-a", "node-b"} {
		rep := node(name).Report
		if rep == nil {
			t.Fatalf("no report from %s", name)
		}
		for i, p := range rep.Pods {
			id := p.Namespace + "/" + p.Name
			if p.Name == "" {
				id = p.Netns
			}
			verdicts[id] = p.Verdict
			if id == "shop/pay" {
				pay = &rep.Pods[i]
			}
		}
	}
	if verdicts["shop/cart"] != nodecheck.VerdictOK || verdicts[healthy.Path()] != nodecheck.VerdictOK ||
		verdicts["shop/pay"] != nodecheck.VerdictBroken || verdicts[bare.Path()] != nodecheck.VerdictBroken {
		t.Errorf("verdicts %v", verdicts)
	}
	if pay == nil || len(pay.Findings) == 0 || pay.Findings[0].Code != nodecheck.PodSecurityBlocksInit ||
		!slices.ContainsFunc(pay.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.InitMissingNetAdmin }) {
		t.Errorf("shop/pay's findings do not start with PodSecurityBlocksInit beside InitMissingNetAdmin: %+v", pay)
	} else if ev := pay.Findings[0].Evidence; ev["removed"] != "after admission" {
		t.Errorf("shop/pay's PodSecurityBlocksInit evidence %v, want removed after admission", ev)
	}
	if !slices.ContainsFunc(node("node-b").Report.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.IstiodAPIServerUnreachable }) {
		t.Errorf("node-b's report lacks IstiodAPIServerUnreachable: %+v", node("node-b").Report.Findings)
	}

	// The cluster's own root causes.
	find := func(code nodecheck.Code) *nodecheck.Finding {
		for i := range got.Findings {
			if got.Findings[i].Code == code {
				return &got.Findings[i]
			}
		}
		t.Errorf("no cluster finding %s in %+v", code, got.Findings)
		return nil
	}
	if f := find(nodecheck.PodSecurityBlocksInit); f != nil {
		if f.Severity != nodecheck.SeverityError || !strings.Contains(f.Message, "namespace secure") ||
			!strings.Contains(f.Message, "ReplicaSet/web-7c9d8f6b5") || !strings.Contains(f.Message, refusal) {
			t.Errorf("PodSecurityBlocksInit does not cite the ReplicaSet's refusal: %+v", f)
		}
	}
	var refused []string
	for _, f := range got.Findings {
		if f.Code == nodecheck.PodSecurityBlocksInit {
			refused = append(refused, f.Evidence["namespace"].(string))
		}
	}
	if !slices.Equal(refused, []string{"secure", "strict"}) {
		t.Errorf("PodSecurityBlocksInit for namespaces %v, want secure and strict", refused)
	}
	if f := find(nodecheck.IstioCNINodeNotReady); f != nil && !strings.Contains(f.Message, "node-b (1 pod(s), e.g. mesh/api-0; no istio-cni-node pod)") {
		t.Errorf("IstioCNINodeNotReady: %s", f.Message)
	}
	if f := find(nodecheck.IstiodAPIServerUnreachable); f != nil && !strings.Contains(f.Message, "single endpoint ("+nodeA.hostIP.String()+":6443)") {
		t.Errorf("IstiodAPIServerUnreachable does not say the API server is not highly available: %s", f.Message)
	}
	if len(got.APIServer.Endpoints) != 1 || len(got.APIServer.Istiod) != 1 || got.APIServer.Istiod[0].Ready != 1 || got.IstioCNI != "not-installed" {
		t.Errorf("apiServer %+v, istioCNI %q", got.APIServer, got.IstioCNI)
	}
	if len(got.Notes) != 0 {
		t.Errorf("with the documented RBAC nothing should be left unread: %q", got.Notes)
	}
	if got.Summary.Nodes["total"] != 6 || got.Summary.Nodes["reported"] != 2 || got.Summary.Pods["broken"] != 2 || got.Summary.Pods["ok"] != 2 {
		t.Errorf("summary %+v", got.Summary)
	}

	// The table, for a person; then the same binary as kubectl's plugin, directly and through
	// kubectl itself.
	table, _, code := run(t, ctx, nil, binary, "cluster", "--kubeconfig", viewer, "--timeout", "3s")
	keepFile(t, "cluster.txt", table)
	if code != 1 {
		t.Errorf("table: exit %d, want 1", code)
	}
	for _, want := range []string{
		"meshdoctor cluster: 6 node(s), 2 reported, 1 without an agent, 1 agent not running, 2 not answering",
		"pods: 4 checked, 2 ok, 2 broken",
		"node-a  shop/pay", "PodSecurityBlocksInit (+", "node-d  not-answering", "no answer within 3s", "CLUSTER ROOT CAUSES",
		"1 endpoint of the kubernetes Service (" + nodeA.hostIP.String() + ":6443): not highly available; istiod: istio-system/istiod 1/1 ready",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("the table lacks %q:\n%s", want, table)
		}
	}
	dir := t.TempDir()
	plugin := filepath.Join(dir, "kubectl-meshdoctor")
	if err := os.Symlink(binary, plugin); err != nil {
		t.Fatal(err)
	}
	if out, _, code := run(t, ctx, nil, plugin, "--kubeconfig", viewer, "--timeout", "3s"); code != 1 || out != table {
		t.Errorf("as kubectl-meshdoctor: exit %d, output differs from `meshdoctor cluster`:\n%s", code, out)
	}
	path := "PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")
	if out, errOut, code := run(t, ctx, []string{path}, testbed.Kubectl(t), "meshdoctor", "--kubeconfig", viewer, "--timeout", "3s"); code != 1 || out != table {
		t.Errorf("kubectl meshdoctor: exit %d, output differs from `meshdoctor cluster`:\nstderr: %s\n%s", code, errOut, out)
	}

	// On a terminal (script(1) gives it one), a progress line goes to stderr and is erased at the
	// end; stdout, redirected, is the JSON alone.
	ttyJSON, typescript := filepath.Join(dir, "tty.json"), filepath.Join(dir, "typescript")
	line := testbed.ShellQuote(binary) + " cluster -o json --timeout 3s --kubeconfig " + testbed.ShellQuote(viewer) + " > " + testbed.ShellQuote(ttyJSON)
	if _, errOut, code := run(t, ctx, nil, "script", "-qec", line, typescript); code != 1 {
		t.Errorf("under script: exit %d: %s", code, errOut)
	}
	ts, err := os.ReadFile(typescript)
	if err != nil {
		t.Fatal(err)
	}
	last := strings.LastIndex(string(ts), "6/6 node(s) read, 4 without a report")
	if last < 0 || !strings.HasPrefix(string(ts[last:]), "6/6 node(s) read, 4 without a report\r\x1b[K") {
		t.Errorf("the terminal did not get a progress line, erased at the end: %q", ts)
	}
	if data, err := os.ReadFile(ttyJSON); err != nil || !json.Valid(data) {
		t.Errorf("stdout under a terminal is not the JSON alone: %v\n%s", err, data)
	}

	// Without pods/proxy on the agents, nothing is read, and it says why.
	blind := c.reader("meshdoctor-blind", false)
	_, errOut, code = run(t, ctx, nil, binary, "cluster", "--kubeconfig", blind)
	if code != 2 || !strings.Contains(errOut, "may not get pods/proxy in namespace meshdoctor") {
		t.Errorf("without pods/proxy: exit %d, stderr %q; want 2 and the missing permission", code, errOut)
	}

	// Read-only: the cluster command wrote nothing.
	writes, err := api.Writes("meshdoctor-cluster")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range writes {
		t.Errorf("the cluster command wrote: %s %s", w.Verb, w.RequestURI)
	}
}

// keepFile writes an output under -keep, for refreshing testdata by hand.
func keepFile(t *testing.T, name, content string) {
	t.Helper()
	if *keep == "" {
		return
	}
	if err := os.MkdirAll(*keep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*keep, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
