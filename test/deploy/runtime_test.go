package deploy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/deploy/image"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// imageEnv names the image archive `make image` wrote (make test sets it): the image that ships,
// which the DaemonSet test runs. Without it the test builds one of the binary under test with the
// same code (deploy/image), named testImage.
const (
	imageEnv  = "MESHDOCTOR_IMAGE"
	testImage = "meshdoctor.test/meshdoctor:test"
)

// TestDaemonSetRunsWithItsOwnPrivileges runs the chart's DaemonSet container on a real containerd,
// as kubelet would: the image that ships (agentImage: what `make image` wrote), its args, its securityContext (uid 0 with only the named
// capabilities, read-only root, RuntimeDefault seccomp, not privileged) and its hostPath volumes
// with their propagation. Beside it run a healthy injected pod, one whose istio-init lacks
// NET_ADMIN and a pod without Istio. The containerised agent's report must say of every pod what
// `meshdoctor check` run as root on the node says: the named capabilities, the mounts and the
// seccomp profile are enough, and nothing else is needed.
//
// The chart is rendered with values that point the runtime socket, the CNI directories, the
// volatile journal, istio-cni's run directory and the state directory at the test bed's own;
// /proc, /run/netns and /var/log are the node's. The one change to the container is
// --kubeconfig=none: no API server takes part here (TestAgentNeedsExactlyTheChartRBAC has one).
func TestDaemonSetRunsWithItsOwnPrivileges(t *testing.T) {
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dirs := map[string]string{}
	for _, d := range []string{"cniConfDir", "cniBinDir", "runtimeJournalDir", "istioCNIRunDir", "stateDir", "logDir"} {
		dirs[d] = t.TempDir()
	}
	// istiod's log as kubelet keeps it, but owned by another user and unreadable to others (as
	// Ubuntu's syslog is syslog:adm 0640): reading it takes DAC_READ_SEARCH.
	podLogs := filepath.Join(dirs["logDir"], "pods")
	istiodLog(t, podLogs, 4242)
	archive, img := agentImage(t)
	repo, tag := splitRef(t, img.Ref)
	values := []string{"image.repository=" + repo, "image.tag=" + tag,
		"runtime.containerdSocket=" + node.Containerd.Address}
	for k, v := range dirs {
		values = append(values, "hostPaths."+k+"="+v)
	}
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objects(t, helmTemplate(t, values...)), "DaemonSet", "meshdoctor").Object, &ds); err != nil {
		t.Fatal(err)
	}

	if err := node.Containerd.ImportImage(ctx, archive); err != nil {
		t.Fatal(err)
	}
	// containerd holds the archive's manifest itself: the digest a registry would serve.
	if got := importedDigest(ctx, t, node.Containerd, img.Ref); got != img.Digest.String() {
		t.Fatalf("containerd has %s at %s, the archive %s", img.Ref, got, img.Digest)
	}
	pods := []kubelet.Pod{
		kubelet.InjectedPod("shop", "cart"),
		kubelet.InjectedPod("shop", "pay", "NET_RAW"),
		{Namespace: "shop", Name: "plain", Containers: []kubelet.Container{kubelet.App()}},
	}
	for _, p := range pods {
		if _, err := node.RunPod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	out, err := run(t, nil, binary, "check", "-o", "json", "--containerd-address", node.Containerd.Address,
		"--cni-conf-dir", dirs["cniConfDir"], "--cni-bin-dir", dirs["cniBinDir"], "--pod-log-dir", podLogs)
	if err != nil && !strings.Contains(err.Error(), "exit status 1") {
		t.Fatal(err)
	}
	var fromRoot nodecheck.Report
	if err := json.Unmarshal(out, &fromRoot); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}

	nodeIP := node.Containerd.Netns.IPv4.Addr().String()
	shipped := podFromDaemonSet(t, ds, "test-node", nodeIP)
	fromContainer, logs, cartDetails := runAgentPod(t, node, shipped, nodeIP, len(pods)+1)
	// The socket-lb check found the pod's cgroup through the chart's /proc and /sys/fs/cgroup
	// mounts, and read it (no program is attached on the test bed, so no finding).
	if lb, _ := cartDetails["socket-lb"].(map[string]any); lb == nil || lb["cgroup"] == nil || lb["notRead"] != nil {
		t.Errorf("the socket-lb check did not read shop/cart's cgroup in the DaemonSet: %v", cartDetails["socket-lb"])
	}
	// The inbound canary went from the DaemonSet's host network, the node's netns of
	// --node-netns=/proc/self/ns/net, across the pods' bridge to shop/cart's IP, and was captured.
	if !inboundCaptured(cartDetails["capture"]) {
		t.Errorf("no inbound canary from the DaemonSet's host network captured at shop/cart: %v", cartDetails["capture"])
	}
	got, want := podSummary(fromContainer), podSummary(fromRoot)
	if self := got["meshdoctor/"+shipped.Name]; self.Verdict != nodecheck.VerdictSkipped {
		t.Errorf("the agent's own pod: %+v, want skipped (host network)", self)
	}
	delete(got, "meshdoctor/"+shipped.Name) // it did not exist when root checked the node
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the DaemonSet's container and root on the node disagree:\ncontainer: %+v\nroot:      %+v", got, want)
	}
	for name, v := range map[string]nodecheck.Verdict{"shop/cart": nodecheck.VerdictOK, "shop/pay": nodecheck.VerdictBroken,
		"shop/plain": nodecheck.VerdictSkipped} {
		if got[name].Verdict != v {
			t.Errorf("%s: %s, want %s (%+v)", name, got[name].Verdict, v, got[name])
		}
	}
	if !nodeCodes(fromContainer)[nodecheck.IstiodAPIServerUnreachable] || !nodeCodes(fromRoot)[nodecheck.IstiodAPIServerUnreachable] {
		t.Errorf("istiod's log (owned by another user) not read: node findings %v from the container, %v as root",
			nodeCodes(fromContainer), nodeCodes(fromRoot))
	}
	for _, bad := range []string{"permission denied", "operation not permitted", "read-only file system", "cannot read"} {
		if strings.Contains(strings.ToLower(logs), bad) {
			t.Errorf("the agent's log says %q:\n%s", bad, logs)
		}
	}
	if entries, err := os.ReadDir(dirs["stateDir"]); err != nil || len(entries) == 0 {
		t.Errorf("nothing written to the state directory (%v): log offsets are not kept", err)
	}
	t.Logf("container and root agree on %d pods: %+v", len(got), got)

	// Each capability is needed: without it, what it is for fails, and says so.
	for _, tc := range []struct {
		drop string
		// what must show without it: in a pod's reason, or in the agent's log
		inCart, inLog string
		// cartByRules: cart stays ok, its capture verified by rules only (the canary cannot run)
		cartByRules bool
	}{
		{drop: "SYS_ADMIN", inCart: "entering network namespace"},
		{drop: "NET_ADMIN", inCart: "operation not permitted"},
		{drop: "NET_RAW", inCart: "raw ipv4 socket"},
		{drop: "DAC_READ_SEARCH", inLog: "cannot read node logs"},
		{drop: "SETUID", cartByRules: true},
		{drop: "SETGID", cartByRules: true},
	} {
		t.Run("without "+tc.drop, func(t *testing.T) {
			p := podFromDaemonSet(t, ds, "test-node", nodeIP)
			p.Name += "-" + strings.ToLower(strings.ReplaceAll(tc.drop, "_", ""))
			c := &p.Containers[0]
			c.CapAdd = slices.DeleteFunc(slices.Clone(c.CapAdd), func(c string) bool { return c == tc.drop })
			rep, logs, _ := runAgentPod(t, node, p, nodeIP, len(pods)+1)
			cart := podSummary(rep)["shop/cart"]
			if tc.inCart != "" && (cart.Verdict != nodecheck.VerdictUnknown || !strings.Contains(cart.Reason, tc.inCart)) {
				t.Errorf("cart: %+v, want unknown with %q in the reason", cart, tc.inCart)
			}
			if tc.cartByRules && (cart.Verdict != nodecheck.VerdictOK || cart.Capture.VerifiedBy != nodecheck.VerifiedByRules) {
				t.Errorf("cart: %+v, want ok and verified by rules only", cart)
			}
			if tc.inLog != "" && !strings.Contains(logs, tc.inLog) {
				t.Errorf("the agent's log lacks %q:\n%s", tc.inLog, logs)
			}
		})
	}
}

// verdict is what the runtime test compares of a pod's report.
type verdict struct {
	Verdict nodecheck.Verdict
	Reason  string
	Capture nodecheck.Capture
	Codes   []nodecheck.Code
}

func podSummary(r nodecheck.Report) map[string]verdict {
	m := map[string]verdict{}
	for _, p := range r.Pods {
		v := verdict{Verdict: p.Verdict, Reason: p.Reason, Capture: p.Capture}
		for _, f := range p.Findings {
			v.Codes = append(v.Codes, f.Code)
		}
		m[p.Namespace+"/"+p.Name] = v
	}
	return m
}

func nodeCodes(r nodecheck.Report) map[nodecheck.Code]bool {
	m := map[nodecheck.Code]bool{}
	for _, f := range r.Findings {
		m[f.Code] = true
	}
	return m
}

// runAgentPod runs the agent's pod on the node until its report, read where `meshdoctor cluster`
// reads it (the report port on the node's address), lists the node's pods; then removes it (it
// holds the node's ports), and returns the report and the agent's log.
func runAgentPod(t *testing.T, node *kubelet.Node, p kubelet.Pod, nodeIP string, pods int) (nodecheck.Report, string, map[string]any) {
	t.Helper()
	running, err := node.RunPod(t.Context(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := node.RemovePod(context.WithoutCancel(t.Context()), running); err != nil {
			t.Errorf("removing the agent's pod: %v", err)
		}
	}()
	// The agent listens in the pod's network: the node's, which for the test bed is the
	// namespace containerd runs in.
	client := httpClientIn(node.Containerd.Netns.Path())
	var rep nodecheck.Report
	var lastErr error
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if lastErr = fetchReport(client, "http://"+net.JoinHostPort(nodeIP, "9811"), &rep); lastErr == nil && len(rep.Pods) == pods {
			// Node findings come from the node checks, which run beside the first sweep.
			if len(rep.Findings) > 0 {
				break
			}
		} else if lastErr == nil {
			lastErr = fmt.Errorf("%d pods in the report, want %d", len(rep.Pods), pods)
		}
		time.Sleep(200 * time.Millisecond)
	}
	logs := node.Logs(running, p.Containers[0].Name)
	if lastErr != nil || len(rep.Pods) != pods {
		t.Fatalf("no report of the node's %d pods from the agent: %v\nits log:\n%s", pods, lastErr, logs)
	}
	// The debug endpoint, on the node's loopback, is there too for kubectl port-forward.
	var debug nodecheck.Report
	if err := fetchReport(client, "http://127.0.0.1:9810", &debug); err != nil || len(debug.Pods) != pods {
		t.Errorf("the debug endpoint's report: %v (%d pods)", err, len(debug.Pods))
	}
	// And each pod's checks in detail: shop/cart's, for what the checks read.
	var cart struct {
		Details map[string]any `json:"details"`
	}
	resp, err := client.Get("http://127.0.0.1:9810/debug/pods/shop/cart")
	if err != nil {
		t.Fatalf("shop/cart's debug page: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&cart); err != nil {
		t.Fatalf("shop/cart's debug page: %v", err)
	}
	return rep, logs, cart.Details
}

// inboundCaptured says whether a capture check's debug detail holds an inbound canary (one the
// pod answered) judged captured.
func inboundCaptured(detail any) bool {
	d, _ := detail.(map[string]any)
	traffic, _ := d["traffic"].(map[string]any)
	probes, _ := traffic["probes"].([]any)
	for _, p := range probes {
		p, _ := p.(map[string]any)
		outcome, _ := p["outcome"].(map[string]any)
		if p["result"] == "captured" && outcome["answer"] != nil {
			return true
		}
	}
	return false
}

func fetchReport(client *http.Client, base string, rep *nodecheck.Report) error {
	resp, err := client.Get(base + "/debug/report")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%d: %s", resp.StatusCode, body)
	}
	*rep = nodecheck.Report{}
	return json.Unmarshal(body, rep)
}

// istiodLog writes a line of istiod losing the API server in kubelet's layout under dir, owned by
// uid with mode 0640 (its directories 0750).
func istiodLog(t *testing.T, dir string, uid int) {
	t.Helper()
	podDir := filepath.Join(dir, "istio-system_istiod-7d4f8b9c5-x2x9z_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b")
	file := filepath.Join(podDir, "discovery", "0.log")
	if err := os.MkdirAll(filepath.Dir(file), 0o750); err != nil {
		t.Fatal(err)
	}
	ts := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	line := ts + " stderr F " + ts + "\terror\tklog\tk8s.io/client-go@v0.21.2/tools/cache/reflector.go:167: " +
		"Failed to watch *v1.ConfigMap: failed to list *v1.ConfigMap: Get \"https://10.96.0.1:443/api/v1/configmaps\": " +
		"dial tcp 10.96.0.1:443: connect: connection refused\n"
	if err := os.WriteFile(file, []byte(line), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, podDir, filepath.Dir(file), file} {
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		if p != file {
			if err := os.Chmod(p, 0o750); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// agentImage returns the image archive the DaemonSet test runs: $MESHDOCTOR_IMAGE, which must
// carry the binary under test, else one built here from it as `make image` builds one.
func agentImage(t *testing.T) (string, image.Archived) {
	t.Helper()
	archive := os.Getenv(imageEnv)
	if archive == "" {
		built, err := image.Build(t.Context(), image.Spec{Binary: binary, Version: "test", Created: time.Unix(0, 0)})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := image.WriteArchive(&buf, built.Image, testImage); err != nil {
			t.Fatal(err)
		}
		archive = filepath.Join(t.TempDir(), "meshdoctor-image.tar")
		if err := os.WriteFile(archive, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a, err := image.ReadArchive(archive)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Layers) != 1 {
		t.Fatalf("%s: %d layers, want 1", archive, len(a.Layers))
	}
	want, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if got := layerFile(t, a.Layers[0], strings.TrimPrefix(image.BinaryPath, "/")); !bytes.Equal(got, want) {
		t.Fatalf("%s carries another %s than %s (%d bytes, want %d): run make image", archive, image.BinaryPath, binary, len(got), len(want))
	}
	return archive, a
}

// layerFile returns a file of a gzipped layer.
func layerFile(t *testing.T, layer []byte, name string) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// splitRef splits an image reference into the chart's image.repository and image.tag.
func splitRef(t *testing.T, ref string) (repo, tag string) {
	t.Helper()
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		t.Fatalf("image %q has no tag", ref)
	}
	return ref[:i], ref[i+1:]
}

// importedDigest returns the digest containerd lists for ref (`ctr images ls`: REF TYPE DIGEST …).
func importedDigest(ctx context.Context, t *testing.T, c *testbed.Containerd, ref string) string {
	t.Helper()
	out, err := c.Ctr(ctx, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("containerd lists no image %s:\n%s", ref, out)
	return ""
}

// podFromDaemonSet turns the DaemonSet's pod template into what the test bed's kubelet runs, as
// kubelet would: the downward API resolved, securityContext and hostPath volumes passed to CRI,
// each hostPath's type enforced. Anything it does not know how to pass fails the test, so a new
// field in the chart cannot silently go untested.
func podFromDaemonSet(t *testing.T, ds appsv1.DaemonSet, nodeName, nodeIP string) kubelet.Pod {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("the DaemonSet has %d containers and %d init containers; the test knows one container", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	kc := kubelet.Container{Name: c.Name, Image: c.Image, Command: c.Command, Env: map[string]string{}}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			kc.Env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			kc.Env[e.Name] = nodeName
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" && spec.HostNetwork:
			kc.Env[e.Name] = nodeIP
		case e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory":
			q := c.Resources.Limits[corev1.ResourceMemory]
			kc.Env[e.Name] = fmt.Sprint(q.Value())
		default:
			t.Fatalf("env %s: the test does not resolve %+v", e.Name, e.ValueFrom)
		}
	}
	// Kubelet expands $(VAR) in args from the container's environment.
	for _, a := range c.Args {
		kc.Args = append(kc.Args, os.Expand(strings.ReplaceAll(strings.ReplaceAll(a, "$(", "${"), ")", "}"), func(v string) string { return kc.Env[v] }))
	}
	kc.Args = append(kc.Args, "--kubeconfig=none")
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || sc.RunAsUser == nil {
		t.Fatal("the DaemonSet's container has no securityContext with capabilities and a user")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Fatal("the DaemonSet's container is privileged")
	}
	kc.RunAsUser, kc.RunAsGroup = sc.RunAsUser, sc.RunAsGroup
	for _, cap := range sc.Capabilities.Add {
		kc.CapAdd = append(kc.CapAdd, string(cap))
	}
	for _, cap := range sc.Capabilities.Drop {
		kc.CapDrop = append(kc.CapDrop, string(cap))
	}
	kc.ReadOnlyRootfs = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	kc.SeccompRuntimeDefault = sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok || v.HostPath == nil {
			t.Fatalf("volume %s is not a hostPath; the test knows hostPaths only", m.Name)
		}
		checkHostPathType(t, v)
		mount := kubelet.Mount{HostPath: v.HostPath.Path, ContainerPath: m.MountPath, ReadOnly: m.ReadOnly}
		if m.MountPropagation != nil {
			switch *m.MountPropagation {
			case corev1.MountPropagationHostToContainer:
				mount.Propagation = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
			case corev1.MountPropagationBidirectional:
				mount.Propagation = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
			}
		}
		kc.Mounts = append(kc.Mounts, mount)
	}
	return kubelet.Pod{Namespace: ds.Namespace, Name: ds.Name + "-x1x2x", Labels: ds.Spec.Template.Labels,
		Annotations: ds.Spec.Template.Annotations, HostNetwork: spec.HostNetwork, Containers: []kubelet.Container{kc}}
}

// checkHostPathType does what kubelet does before it mounts a hostPath: Directory and Socket must
// exist as such; DirectoryOrCreate is created.
func checkHostPathType(t *testing.T, v corev1.Volume) {
	t.Helper()
	p := v.HostPath.Path
	typ := corev1.HostPathUnset
	if v.HostPath.Type != nil {
		typ = *v.HostPath.Type
	}
	info, err := os.Stat(p)
	switch typ {
	case corev1.HostPathDirectoryOrCreate:
		if err != nil {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	case corev1.HostPathDirectory:
		if err != nil || !info.IsDir() {
			t.Fatalf("hostPath %s (%s): not a directory on this node: %v", v.Name, p, err)
		}
	case corev1.HostPathSocket:
		if err != nil || info.Mode()&os.ModeSocket == 0 {
			t.Fatalf("hostPath %s (%s): not a socket on this node: %v", v.Name, p, err)
		}
	default:
		t.Fatalf("hostPath %s has type %q: the chart must say what it expects on the node", v.Name, typ)
	}
}

// httpClientIn is an HTTP client whose connections are made inside a network namespace (the
// socket stays there once made).
func httpClientIn(netns string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := innetns.Do(ctx, netns, func() error {
			var err error
			conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}
