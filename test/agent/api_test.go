package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// apiPod is the Pod object of the same pod, bound to the node.
func apiPod(ns, name string) *corev1.Pod {
	c := func(n string) corev1.Container { return corev1.Container{Name: n, Image: "meshdoctor.test/istio:1"} }
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Annotations: map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus(istiopod.ContainerIstioInit), "owner.example/keep": "me"}},
		Spec: corev1.PodSpec{NodeName: "test-node", InitContainers: []corev1.Container{c("istio-init")},
			Containers: []corev1.Container{c("istio-proxy"), c("app")}},
	}
}

// apiPods makes this node, namespace shop and its service account on the API server, and for each
// name a Pod object bound to the node with the same pod run as a real CRI sandbox; it returns
// each pod's netns.
func apiPods(t *testing.T, ctx context.Context, kc kubernetes.Interface, node *kubelet.Node, names ...string) map[string]string {
	t.Helper()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "test-node"}}, metav1.CreateOptions{}))
	must(kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}))
	must(kc.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	netns := map[string]string{}
	for _, name := range names {
		p, err := kc.CoreV1().Pods("shop").Create(ctx, apiPod("shop", name), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod := kubelet.InjectedPod("shop", name)
		pod.UID = string(p.UID)
		rp, err := node.RunPod(ctx, pod)
		if err != nil {
			t.Fatal(err)
		}
		netns[name] = rp.Netns
	}
	return netns
}

// TestAgentReportsToAPIServer: Pod objects matching real CRI sandboxes; a pod's rules broken and
// restored show in its annotations, events and the metrics; the API server taken away and brought
// back, annotations converge; once converged the agent writes nothing.
func TestAgentReportsToAPIServer(t *testing.T) {
	api := testbed.StartAPIServer(t)
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	netns := apiPods(t, ctx, kc, node, "cart", "pay")
	a := startAgent(t, "--kubeconfig", api.Kubeconfig, "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "3s", "--debounce", "200ms")

	annotations := func(name string) map[string]string {
		p, err := kc.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return p.Annotations
	}
	waitVerdict := func(name, verdict string, within time.Duration) time.Duration {
		t.Helper()
		return testbed.Eventually(t, within, name+" annotated "+verdict, func() error {
			an := annotations(name)
			if an["meshdoctor.io/verdict"] != verdict {
				return fmt.Errorf("annotations %v", an)
			}
			if an["owner.example/keep"] != "me" || an["sidecar.istio.io/status"] == "" {
				return fmt.Errorf("other annotations touched: %v", an)
			}
			if _, err := time.Parse(time.RFC3339, an["meshdoctor.io/since"]); err != nil {
				return fmt.Errorf("meshdoctor.io/since: %v", err)
			}
			return nil
		})
	}
	waitVerdict("cart", "ok", time.Minute)
	waitVerdict("pay", "ok", time.Minute)

	events := func(reasonPrefix, typ string) int {
		l, err := kc.CoreV1().Events("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			return -1
		}
		n := 0
		for _, e := range l.Items {
			if e.InvolvedObject.Name == "pay" && e.Type == typ && strings.HasPrefix(e.Reason, reasonPrefix) {
				n++
			}
		}
		return n
	}

	// Break pay's rules: annotation, Warning event with the code as reason, metric.
	breakJump(t, ctx, netns["pay"])
	took := waitVerdict("pay", "broken", 30*time.Second)
	t.Logf("rule removed → annotation broken in %s (recheck 3s)", took.Round(time.Millisecond))
	code := annotations("pay")["meshdoctor.io/findings"]
	if !strings.HasPrefix(code, "Redirect") {
		t.Errorf("findings annotation %q, want a RedirectRules* code", code)
	}
	testbed.Eventually(t, 20*time.Second, "Warning event", func() error {
		if n := events(strings.Split(code, ",")[0], corev1.EventTypeWarning); n != 1 {
			return fmt.Errorf("%d Warning events with reason %s", n, code)
		}
		return nil
	})
	if v := metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); v != 1 {
		t.Errorf("meshdoctor_pods{verdict=broken} = %v, want 1", v)
	}
	// Still broken a few re-checks later: no second event (deduplicated).
	time.Sleep(7 * time.Second)
	if n := events(strings.Split(code, ",")[0], corev1.EventTypeWarning); n != 1 {
		t.Errorf("%d Warning events after re-checks, want 1 (deduplicated)", n)
	}

	// Restore: ok again, Normal event.
	restoreJump(t, ctx, netns["pay"])
	waitVerdict("pay", "ok", 30*time.Second)
	testbed.Eventually(t, 20*time.Second, "Normal recovery event", func() error {
		if n := events("CaptureRecovered", corev1.EventTypeNormal); n != 1 {
			return fmt.Errorf("%d recovery events", n)
		}
		return nil
	})

	// The API server goes away; capture breaks meanwhile; the agent still sees it; when the API
	// server is back, the annotation converges without a restart.
	if err := api.Stop(); err != nil {
		t.Fatal(err)
	}
	breakJump(t, ctx, netns["cart"])
	testbed.Eventually(t, 30*time.Second, "broken seen without the API server", func() error {
		if v := metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`); v != 1 {
			return fmt.Errorf("broken = %v", v)
		}
		return nil
	})
	time.Sleep(5 * time.Second) // a few failed writes and informer retries
	if err := api.Start(ctx); err != nil {
		t.Fatal(err)
	}
	took = waitVerdict("cart", "broken", 2*time.Minute)
	t.Logf("API server back → annotation converged in %s", took.Round(time.Millisecond))
	restoreJump(t, ctx, netns["cart"])
	waitVerdict("cart", "ok", 30*time.Second)

	// Steady state: after convergence, re-checks write nothing.
	time.Sleep(4 * time.Second)
	before, err := api.Writes("meshdoctor-agent")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second) // three re-check periods
	after, err := api.Writes("meshdoctor-agent")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		for _, e := range after[len(before):] {
			t.Errorf("write in steady state: %s %s", e.Verb, e.RequestURI)
		}
	}
	t.Logf("agent writes in total: %d; in steady state (10 s, 3 re-checks of 2 pods): %d", len(after), len(after)-len(before))
	a.stop(t)
}
