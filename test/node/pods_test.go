package node_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// scenario is one pod of the test node and what meshdoctor must say of it.
type scenario struct {
	pod kubelet.Pod
	// ambientArgs, when not nil, has Istio's ambient writer enrol the pod after it starts, and
	// a stand-in ztunnel listen in it unless ztunnelLost.
	ambientArgs []string
	ztunnelLost bool
	// probeSetLost: istio-cni's node-side probe set lacks the enrolled pod's address.
	probeSetLost bool
	// after: the pod starts once every other scenario's pod runs.
	after   bool
	verdict nodecheck.Verdict
	mode    string
	codes   []nodecheck.Code
	// cni is true when the findings must point at istio-cni.
	cni bool
}

func scenarios() []scenario {
	ambient := map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}
	ambientLabels := map[string]string{istiopod.LabelDataplaneMode: "ambient"}
	return []scenario{
		{
			pod: kubelet.Pod{Namespace: "shop", Name: "cart",
				Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus("istio-init")},
				InitContainers: []kubelet.Container{kubelet.IstioInit()},
				Containers:     []kubelet.Container{kubelet.IstioProxy(), kubelet.App()}},
			verdict: nodecheck.VerdictOK, mode: "sidecar-redirect",
		},
		{
			pod: kubelet.Pod{Namespace: "shop", Name: "native-sidecar",
				Annotations: map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus("istio-init", "istio-proxy")},
				InitContainers: []kubelet.Container{kubelet.IstioInit(),
					func() kubelet.Container { c := kubelet.IstioProxy(); c.RestartAlways = true; return c }()},
				Containers: []kubelet.Container{kubelet.App()}},
			verdict: nodecheck.VerdictOK, mode: "sidecar-redirect",
		},
		{
			// Something stripped NET_ADMIN from istio-init: it really fails to write the rules.
			pod: kubelet.Pod{Namespace: "shop", Name: "no-net-admin",
				Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus("istio-init")},
				InitContainers: []kubelet.Container{kubelet.IstioInit("NET_RAW")},
				Containers:     []kubelet.Container{kubelet.IstioProxy(), kubelet.App()}},
			verdict: nodecheck.VerdictBroken, mode: "sidecar-redirect",
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing, nodecheck.InitMissingNetAdmin, nodecheck.InitContainerFailed},
		},
		{
			// CNI mode with no istio-cni on the node: Istio's validation exits 126.
			pod: kubelet.Pod{Namespace: "shop", Name: "cni-mode",
				Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus("istio-validation")},
				InitContainers: []kubelet.Container{kubelet.IstioValidation()},
				Containers:     []kubelet.Container{kubelet.IstioProxy(), kubelet.App()}},
			verdict: nodecheck.VerdictBroken, mode: "sidecar-redirect",
			// and the node's istio-cni-node (below) came up after it was networked: the boot race.
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing, nodecheck.InitContainerFailed, nodecheck.PodCreatedBeforeIstioCNI}, cni: true,
		},
		{
			// This node's istio-cni-node, started after the other pods (its host network skips it).
			pod: kubelet.Pod{Namespace: "istio-system", Name: "istio-cni-node-t3st", HostNetwork: true,
				Labels: map[string]string{"k8s-app": "istio-cni-node"}, Containers: []kubelet.Container{kubelet.App()}},
			after: true, verdict: nodecheck.VerdictSkipped, mode: "none",
		},
		{
			pod:     kubelet.Pod{Namespace: "shop", Name: "plain", Containers: []kubelet.Container{kubelet.App()}},
			verdict: nodecheck.VerdictSkipped, mode: "none",
		},
		{
			pod: kubelet.Pod{Namespace: "kube-system", Name: "hostnet", HostNetwork: true,
				Annotations: map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus("istio-init")},
				Containers:  []kubelet.Container{kubelet.App()}},
			verdict: nodecheck.VerdictSkipped, mode: "none",
		},
		{
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{kubelet.App()}},
			ambientArgs: []string{},
			verdict:     nodecheck.VerdictOK, mode: "ambient",
		},
		{
			// Enrolled, then ztunnel lost the pod: the rules stay, nothing listens behind them.
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient-ghost", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{kubelet.App()}},
			ambientArgs: []string{}, ztunnelLost: true,
			verdict: nodecheck.VerdictBroken, mode: "ambient",
			codes: []nodecheck.Code{nodecheck.CaptureTargetNotListening},
		},
		{
			// Enrolled and ztunnel there, but istio-cni's host probe set lost the pod's address:
			// kubelet's probes of it would go through ztunnel.
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient-probe-set-lost", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{kubelet.App()}},
			ambientArgs: []string{}, probeSetLost: true,
			verdict: nodecheck.VerdictBroken, mode: "ambient",
			codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod},
		},
		{
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient-unenrolled", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{kubelet.App()}},
			verdict: nodecheck.VerdictBroken, mode: "ambient",
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}, cni: true,
		},
	}
}

// runScenarios runs every scenario's pod on the node, in parallel, and enrols the ambient ones:
// their in-pod rules, and istio-cni's node side in the runtime's netns (the node's, for the pods'
// bridge), written by Istio's own code (test/tools/ambient-inpod --host, with hostArgs: e.g.
// --native-nftables for istio-cni's native nftables mode).
func runScenarios(t testing.TB, ctx context.Context, n *kubelet.Node, scs []scenario, hostArgs ...string) map[string]*kubelet.RunningPod {
	t.Helper()
	writer := ""
	for _, s := range scs {
		if s.ambientArgs != nil {
			writer = testbed.AmbientInpod(t)
		}
	}
	pods := map[string]*kubelet.RunningPod{}
	for _, after := range []bool{false, true} {
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make([]error, len(scs))
		for i, s := range scs {
			if s.after != after {
				continue
			}
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
	}
	var probeIPs []string
	for _, s := range scs {
		p := pods[s.pod.Namespace+"/"+s.pod.Name]
		if s.ambientArgs != nil && !s.ztunnelLost {
			testbed.ZtunnelStandIn(t, p.Netns)
		}
		if s.ambientArgs != nil && !s.probeSetLost {
			probeIPs = append(probeIPs, p.IP)
		}
	}
	if writer != "" {
		args := append([]string{"--host", "--probe-ips", strings.Join(probeIPs, ",")}, hostArgs...)
		if err := testbed.WriteAmbientRules(ctx, writer, n.Containerd.Netns.Path(), args...); err != nil {
			t.Fatal(err)
		}
	}
	return pods
}

// nativeAmbientScenarios are ambient pods on a node whose istio-cni runs in native nftables mode
// (values.global.nativeNftables): in-pod tables inet istio-ambient-*, and on the node the table
// inet istio-ambient-nat with the probe sets and the SNAT of kubelet's probes.
func nativeAmbientScenarios() []scenario {
	ambient := map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}
	ambientLabels := map[string]string{istiopod.LabelDataplaneMode: "ambient"}
	native := []string{"--native-nftables"}
	return []scenario{
		{
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient-nft", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{kubelet.App()}},
			ambientArgs: native,
			verdict:     nodecheck.VerdictOK, mode: "ambient",
		},
		{
			// istio-cni's nft probe set lost the pod's address: kubelet's probes would go through ztunnel.
			pod: kubelet.Pod{Namespace: "mesh", Name: "ambient-nft-probe-set-lost", Labels: ambientLabels, Annotations: ambient,
				Containers: []kubelet.Container{kubelet.App()}},
			ambientArgs: native, probeSetLost: true,
			verdict: nodecheck.VerdictBroken, mode: "ambient",
			codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod},
		},
	}
}
