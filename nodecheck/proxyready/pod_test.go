package proxyready

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// proxyImage is the image of the real-pod test's istio-proxy and app: Istio's pilot-agent with
// what it reads in Istio's proxy image (istiod's root certificate, Envoy's bootstrap template
// from Istio's source), the stand-in Envoy binary, and busybox for the app.
const proxyImage = "meshdoctor.test/proxyready:1"

func buildProxyImage(t *testing.T, ctx context.Context, n *kubelet.Node) {
	dir := t.TempDir()
	im := testbed.NewImage(proxyImage, "/usr/local/bin/pilot-agent")
	if err := im.AddBinary(ctx, testbed.PilotAgent(t), "/usr/local/bin/pilot-agent"); err != nil {
		t.Fatal(err)
	}
	if err := im.AddFile(filepath.Join(istioSource(t), bootstrapTemplate), "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json"); err != nil {
		t.Fatal(err)
	}
	cert := filepath.Join(dir, "root-cert.pem")
	writeRootCert(t, cert)
	if err := im.AddFile(cert, "/var/run/secrets/istio/root-cert.pem"); err != nil {
		t.Fatal(err)
	}
	im.AddContent("/usr/local/bin/envoy", []byte("#!/bin/sh\n# Stand-in for Envoy: pilot-agent keeps running while its Envoy lives.\nexec sleep 2147483647\n"), 0o755)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := im.AddBinary(ctx, busybox, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "sleep", "nc", "echo"} {
		im.AddSymlink("/bin/"+applet, "busybox")
	}
	im.AddDir("/etc/istio/proxy")
	im.AddDir("/tmp")
	archive := filepath.Join(dir, "proxyready.tar")
	if err := im.WriteArchive(archive); err != nil {
		t.Fatal(err)
	}
	if err := n.Containerd.ImportImage(ctx, archive); err != nil {
		t.Fatal(err)
	}
}

func istioProxy(restartAlways bool) kubelet.Container {
	pc, _ := json.Marshal(map[string]string{"binaryPath": "/usr/local/bin/envoy", "discoveryAddress": "127.0.0.1:15012"})
	return kubelet.Container{
		Name: istiopod.ContainerIstioProxy, Image: proxyImage, Args: []string{"proxy", "sidecar"},
		Env:       map[string]string{"POD_NAME": "cart", "POD_NAMESPACE": "shop", "PROXY_CONFIG": string(pc)},
		RunAsUser: kubelet.Int64(0), RunAsGroup: kubelet.Int64(0), RestartAlways: restartAlways,
	}
}

// app asks a Service as soon as it starts: the pod's capture sends it to 127.0.0.1:15001, where
// Envoy does not listen yet. busybox nc prints the kernel's answer.
func app() kubelet.Container {
	return kubelet.Container{Name: "cart", Image: proxyImage, Command: []string{"/bin/sh", "-c",
		"echo starting the cart service; nc -w 2 10.96.12.7 8080 </dev/null; exec sleep 3600"}}
}

// TestRealPods runs pods on a real containerd, driven through CRI the way kubelet does: istio-init
// writes the capture rules, Istio's pilot-agent runs as istio-proxy (its Envoy a stand-in that
// istiod never configures), and the app's first request is refused by the capture. Discovery
// reads them back from containerd, and the check is judged on what it says of each.
func TestRealPods(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	buildProxyImage(t, ctx, n)
	init := kubelet.Container{Name: istiopod.ContainerIstioInit, Args: append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
		RunAsUser: kubelet.Int64(0), RunAsGroup: kubelet.Int64(0), CapAdd: []string{"NET_ADMIN", "NET_RAW"}, CapDrop: []string{"ALL"}}
	classic := `{"initContainers":["istio-init"],"containers":["istio-proxy"]}`
	native := `{"initContainers":["istio-init","istio-proxy"],"containers":null}`
	cases := []struct {
		pod        kubelet.Pod
		protection Protection
		proof      string
	}{
		{kubelet.Pod{Name: "unprotected", Annotations: map[string]string{istiopod.AnnotationSidecarStatus: classic},
			InitContainers: []kubelet.Container{init}, Containers: []kubelet.Container{app(), istioProxy(false)}},
			ProtectionNone, proofStartOrder},
		{kubelet.Pod{Name: "native-sidecar", Annotations: map[string]string{istiopod.AnnotationSidecarStatus: native},
			InitContainers: []kubelet.Container{init, istioProxy(true)}, Containers: []kubelet.Container{app()}},
			ProtectionNativeSidecar, proofProbe},
		{kubelet.Pod{Name: "hold", Annotations: map[string]string{istiopod.AnnotationSidecarStatus: classic,
			istiopod.AnnotationProxyConfig: "holdApplicationUntilProxyStarts: true"},
			InitContainers: []kubelet.Container{init}, Containers: []kubelet.Container{istioProxy(false), app()}},
			ProtectionHold, proofProbe},
	}
	running := map[string]*kubelet.RunningPod{}
	for _, tc := range cases {
		tc.pod.Namespace = "shop"
		rp, err := n.RunPod(ctx, tc.pod)
		if err != nil {
			t.Fatal(err)
		}
		if rp.ExitCodes[istiopod.ContainerIstioInit] != 0 {
			t.Fatalf("istio-init failed in %s:\n%s", rp.Name, n.Logs(rp, istiopod.ContainerIstioInit))
		}
		running[rp.Name] = rp
		// Envoy's admin port, as an Envoy that istiod never configured has it.
		startEnvoyAdminStandIn(t, rp.Netns, adminNoXDS)
	}

	rt, err := containerd.New(n.Containerd.Address, "/")
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	targets, err := rt.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chk, err := New(Config{Prober: NetnsProber{}, PodLogDir: n.Containerd.PodLogDir, Grace: time.Minute, Deadline: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.pod.Name, func(t *testing.T) {
			rp := running[tc.pod.Name]
			var target nodecheck.Target
			for _, tg := range targets {
				if tg.Name == rp.Name {
					target = tg
				}
			}
			if target.Netns == "" {
				t.Fatalf("discovery did not find %s: %+v", rp.Name, targets)
			}
			// What kubelet's probes do all along: pilot-agent logs why the proxy is not ready.
			waitProxyLogged(t, n, rp, target.Netns)
			// The scenario is an app whose first request was refused: check once it has been
			// (the last pod's app may still be starting).
			waitLogged(t, n, rp, "cart", "Connection refused")
			res, err := chk.Check(ctx, target)
			if err != nil {
				t.Fatal(err)
			}
			byCode := map[nodecheck.Code]nodecheck.Finding{}
			for _, f := range res.Findings {
				byCode[f.Code] = f
			}
			nr, ok := byCode[nodecheck.ProxyNotReady]
			if !ok || nr.Severity != nodecheck.SeverityInfo ||
				!strings.Contains(nr.Message, "config not received from XDS server (is Istiod running?)") {
				t.Errorf("ProxyNotReady of a young pod whose istiod is away: %+v", nr)
			}
			as, ok := byCode[nodecheck.AppStartedBeforeProxy]
			if !ok || as.Severity != nodecheck.SeverityWarning {
				t.Fatalf("AppStartedBeforeProxy: %+v", res.Findings)
			}
			if prot := as.Evidence["protection"].(PodProtection); prot.Kind != tc.protection {
				t.Errorf("protection %s, want %s", prot.Kind, tc.protection)
			}
			apps := as.Evidence["containers"].([]appStart)
			if len(apps) != 1 || apps[0].Name != "cart" || apps[0].Proof != tc.proof {
				t.Fatalf("apps %+v, want cart proved by %s", apps, tc.proof)
			}
			if len(apps[0].Refused) != 1 || !strings.Contains(apps[0].Refused[0].Line, "Connection refused") ||
				apps[0].Refused[0].Origin != "shop/"+rp.Name+"/cart" {
				t.Errorf("the app's refused connection is not cited: %+v\n%s", apps[0].Refused, n.Logs(rp, "cart"))
			}
		})
	}
}

// waitLogged waits for text in a container's log file.
func waitLogged(t *testing.T, n *kubelet.Node, rp *kubelet.RunningPod, container, text string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(n.Logs(rp, container), text) {
		if time.Now().After(deadline) {
			t.Fatalf("%s of %s never logged %q:\n%s", container, rp.Name, text, n.Logs(rp, container))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitProxyLogged probes the pod as kubelet would and waits for pilot-agent's reason to be in
// istio-proxy's log file.
func waitProxyLogged(t *testing.T, n *kubelet.Node, rp *kubelet.RunningPod, netns string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := (NetnsProber{}).Probe(t.Context(), netns, DefaultStatusPort)
		if err != nil {
			t.Fatal(err)
		}
		logs := n.Logs(rp, istiopod.ContainerIstioProxy)
		if p.Outcome == OutcomeNotReady && strings.Contains(logs, "config not received from XDS server") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pilot-agent in %s never said why it is not ready (probe %+v):\n%s", rp.Name, p, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
