package istiocni

import (
	"context"
	"slices"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

func TestFromTargets(t *testing.T) {
	running := func(name string) nodecheck.Container {
		return nodecheck.Container{Name: name, Role: nodecheck.RoleApp, State: nodecheck.ContainerRunning}
	}
	targets := []nodecheck.Target{
		{Namespace: "kube-system", Name: "coredns-5d78c9869d-abcde", Containers: []nodecheck.Container{running("coredns")}},
		{Namespace: "istio-system", Name: "istio-cni-node-old01", Labels: map[string]string{"k8s-app": "istio-cni-node"},
			Containers: []nodecheck.Container{{Name: "install-cni", Role: nodecheck.RoleApp, State: nodecheck.ContainerExited, ExitCode: 1, Reason: "Error", Attempt: 7}}},
		{Namespace: "istio-system", Name: "istio-cni-node-x7k2p", Labels: map[string]string{"k8s-app": "istio-cni-node"},
			Containers: []nodecheck.Container{running("install-cni")}},
		{Namespace: "shop", Name: "cart-7d9", Containers: []nodecheck.Container{
			{Name: "istio-validation", Role: nodecheck.RoleInit, State: nodecheck.ContainerExited}, running("istio-proxy"), running("app")}},
		{Namespace: "shop", Name: "checkout-5c6d", Annotations: map[string]string{
			"sidecar.istio.io/status": `{"initContainers":["istio-validation"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}`}},
		{Namespace: "shop", Name: "legacy-1", Annotations: map[string]string{
			"sidecar.istio.io/status": `{"initContainers":["istio-init"],"containers":["istio-proxy"]}`}},
	}
	ps := FromTargets(targets)
	a, err := ps.IstioCNIAgent(context.Background())
	if err != nil || !a.Found || a.Name != "istio-cni-node-x7k2p" || !a.Ready {
		t.Fatalf("agent: %+v %v (want the running one of a rollout)", a, err)
	}
	pods, _ := ps.CNIModePods(context.Background())
	if !slices.Equal(pods, []string{"shop/cart-7d9", "shop/checkout-5c6d"}) {
		t.Fatalf("CNI-mode pods %v", pods)
	}
	crash := FromTargets(targets[:2])
	a, _ = crash.IstioCNIAgent(context.Background())
	if !a.Found || a.Ready || a.Containers[0].RestartCount != 7 {
		t.Fatalf("crash-looping agent: %+v", a)
	}
	none, _ := FromTargets(targets[:1]).IstioCNIAgent(context.Background())
	if none.Found {
		t.Fatalf("no agent on the node: %+v", none)
	}
}
