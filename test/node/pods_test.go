package node_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// sidecarStatus is the sidecar.istio.io/status annotation Istio's injector writes.
func sidecarStatus(inits ...string) string {
	containers := `["istio-proxy"]`
	if len(inits) > 0 && inits[len(inits)-1] == "istio-proxy" {
		containers = `[]` // native sidecar: istio-proxy is an init container
	}
	return `{"initContainers":["` + strings.Join(inits, `","`) + `"],"containers":` + containers +
		`,"volumes":["workload-socket","credential-socket","workload-certs","istio-envoy","istio-data","istio-podinfo",` +
		`"istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}`
}

// istioInit is istio-init as the injector writes it: pilot-agent istio-iptables with the
// default sidecar arguments, as root with only NET_ADMIN and NET_RAW.
func istioInit(caps ...string) kubelet.Container {
	if caps == nil {
		caps = []string{"NET_ADMIN", "NET_RAW"}
	}
	return kubelet.Container{
		Name:      capture.ContainerIstioInit,
		Args:      append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
		RunAsUser: kubelet.Int64(0), RunAsGroup: kubelet.Int64(0),
		CapAdd: caps, CapDrop: []string{"ALL"},
	}
}

// istioValidation is the CNI-mode init container: the same tool checks that istio-cni's rules
// redirect, as the proxy's user with no capabilities.
func istioValidation() kubelet.Container {
	return kubelet.Container{
		Name: capture.ContainerIstioValidation,
		Args: append(append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
			"--run-validation", "--skip-rule-apply"),
		RunAsUser: kubelet.Int64(1337), RunAsGroup: kubelet.Int64(1337), CapDrop: []string{"ALL"},
	}
}

// istioProxy stands in for Istio's proxy: as the proxy's user, busybox's httpd answers 200 on
// pilot-agent's readiness URL (localhost:15020/healthz/ready), so the pod's proxy is ready.
func istioProxy() kubelet.Container {
	return kubelet.Container{Name: capture.ContainerIstioProxy,
		Command: []string{"sh", "-c", "mkdir -p /tmp/www/healthz && echo ok > /tmp/www/healthz/ready && " +
			"exec httpd -f -p 127.0.0.1:15020 -h /tmp/www"},
		RunAsUser: kubelet.Int64(1337), RunAsGroup: kubelet.Int64(1337), CapDrop: []string{"ALL"}}
}

func app() kubelet.Container {
	return kubelet.Container{Name: "app", Command: []string{"sleep", "3600"}}
}

// scenario is one pod of the test node and what meshdoctor must say of it.
type scenario struct {
	pod kubelet.Pod
	// ambientArgs, when not nil, has Istio's ambient writer enrol the pod after it starts.
	ambientArgs []string
	verdict     nodecheck.Verdict
	mode        string
	codes       []nodecheck.Code
	// cni is true when the findings must point at istio-cni.
	cni bool
}

func scenarios() []scenario {
	ambient := map[string]string{capture.AnnotationAmbientRedirection: "enabled"}
	ambientLabels := map[string]string{capture.LabelDataplaneMode: "ambient"}
	return []scenario{
		{
			pod: kubelet.Pod{Namespace: "shop", Name: "cart",
				Annotations:    map[string]string{capture.AnnotationSidecarStatus: sidecarStatus("istio-init")},
				InitContainers: []kubelet.Container{istioInit()},
				Containers:     []kubelet.Container{istioProxy(), app()}},
			verdict: nodecheck.VerdictOK, mode: "sidecar-redirect",
		},
		{
			pod: kubelet.Pod{Namespace: "shop", Name: "native-sidecar",
				Annotations: map[string]string{capture.AnnotationSidecarStatus: sidecarStatus("istio-init", "istio-proxy")},
				InitContainers: []kubelet.Container{istioInit(),
					func() kubelet.Container { c := istioProxy(); c.RestartAlways = true; return c }()},
				Containers: []kubelet.Container{app()}},
			verdict: nodecheck.VerdictOK, mode: "sidecar-redirect",
		},
		{
			// Something stripped NET_ADMIN from istio-init: it really fails to write the rules.
			pod: kubelet.Pod{Namespace: "shop", Name: "no-net-admin",
				Annotations:    map[string]string{capture.AnnotationSidecarStatus: sidecarStatus("istio-init")},
				InitContainers: []kubelet.Container{istioInit("NET_RAW")},
				Containers:     []kubelet.Container{istioProxy(), app()}},
			verdict: nodecheck.VerdictBroken, mode: "sidecar-redirect",
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing, nodecheck.InitMissingNetAdmin, nodecheck.InitContainerFailed},
		},
		{
			// CNI mode with no istio-cni on the node: Istio's validation exits 126.
			pod: kubelet.Pod{Namespace: "shop", Name: "cni-mode",
				Annotations:    map[string]string{capture.AnnotationSidecarStatus: sidecarStatus("istio-validation")},
				InitContainers: []kubelet.Container{istioValidation()},
				Containers:     []kubelet.Container{istioProxy(), app()}},
			verdict: nodecheck.VerdictBroken, mode: "sidecar-redirect",
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing, nodecheck.InitContainerFailed}, cni: true,
		},
		{
			pod:     kubelet.Pod{Namespace: "shop", Name: "plain", Containers: []kubelet.Container{app()}},
			verdict: nodecheck.VerdictSkipped, mode: "none",
		},
		{
			pod: kubelet.Pod{Namespace: "kube-system", Name: "hostnet", HostNetwork: true,
				Annotations: map[string]string{capture.AnnotationSidecarStatus: sidecarStatus("istio-init")},
				Containers:  []kubelet.Container{app()}},
			verdict: nodecheck.VerdictSkipped, mode: "none",
		},
		{
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{app()}},
			ambientArgs: []string{},
			verdict:     nodecheck.VerdictOK, mode: "ambient",
		},
		{
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient-unenrolled", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{app()}},
			verdict: nodecheck.VerdictBroken, mode: "ambient",
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}, cni: true,
		},
	}
}

// runScenarios runs every scenario's pod on the node, in parallel, and enrols the ambient ones.
func runScenarios(t testing.TB, ctx context.Context, n *kubelet.Node, scs []scenario) map[string]*kubelet.RunningPod {
	t.Helper()
	writer := ""
	for _, s := range scs {
		if s.ambientArgs != nil {
			writer = testbed.AmbientInpod(t)
		}
	}
	pods := map[string]*kubelet.RunningPod{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(scs))
	for i, s := range scs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := n.RunPod(ctx, s.pod)
			if err == nil && s.ambientArgs != nil {
				err = testbed.WriteAmbientRules(ctx, writer, p.Netns, s.ambientArgs...)
			}
			errs[i] = err
			mu.Lock()
			pods[s.pod.Namespace+"/"+s.pod.Name] = p
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return pods
}
