package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// TestAgentChecksOnRuntimeEvents: with a period far too long to matter, a real CRI pod whose
// rules were broken is checked again when containerd reports a container of it exiting and its
// next attempt starting (kubelet restarting a crashed container), and again once repaired.
func TestAgentChecksOnRuntimeEvents(t *testing.T) {
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pod, err := node.RunPod(ctx, kubelet.InjectedPod("shop", "cart"))
	if err != nil {
		t.Fatal(err)
	}
	// Without the nftables watch, which would see the broken rules before any runtime event.
	a := startAgent(t, "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "1h", "--debounce", "200ms", "--watch-nftables=false")
	// The subscription is logged once made; the sweep it asks for may be folded into the
	// startup sweep, so the test waits for the subscription itself.
	testbed.Eventually(t, time.Minute, "subscribed to containerd's events", func() error {
		if !strings.Contains(a.Logs(), `"msg":"subscribed to containerd's events"`) {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	verdicts := func(ok, broken float64) func() error { return podCounts(t, a, ok, broken) }
	testbed.Eventually(t, 30*time.Second, "the pod ok", verdicts(1, 0))

	breakJump(t, ctx, pod.Netns)
	if _, err := node.RestartContainer(ctx, pod, "app"); err != nil {
		t.Fatal(err)
	}
	took := testbed.Eventually(t, 30*time.Second, "the broken pod seen after its container restarted", verdicts(0, 1))
	t.Logf("container restart → metric broken in %s (debounce 200ms, period 1h)", took.Round(time.Millisecond))

	restoreJump(t, ctx, pod.Netns)
	if _, err := node.RestartContainer(ctx, pod, "app"); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "the repaired pod seen after its container restarted", verdicts(1, 0))
	a.stop(t)
}

// TestAgentSeesNftablesChangesAtOnce: with a period far too long to matter and the default
// debounce, a real CRI pod (iptables-nft rules written by Istio's istio-init) whose PREROUTING
// jump is deleted is seen broken within a second, from the kernel's nftables notification in
// the pod's netns, and ok again within a second of the jump's return. Nothing else tells the
// agent: no container starts or exits.
func TestAgentSeesNftablesChangesAtOnce(t *testing.T) {
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pod, err := node.RunPod(ctx, kubelet.InjectedPod("shop", "cart"))
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--kubeconfig=none", "--containerd-address", node.Containerd.Address, "--recheck-interval", "1h")
	verdicts := func(ok, broken float64) func() error { return podCounts(t, a, ok, broken) }
	testbed.Eventually(t, 30*time.Second, "the pod ok", verdicts(1, 0))
	// The subscription is made after the pod's first check: wait until the agent holds it.
	testbed.Eventually(t, 10*time.Second, "the pod's nftables watched", func() error {
		if !strings.Contains(a.Logs(), `"pod checked`) {
			return fmt.Errorf("no check logged yet")
		}
		return nil
	})
	// And until its containerd subscription is over a second old: only then does it keep the
	// node's listing between passes (runtimeevents.Listing).
	testbed.Eventually(t, 10*time.Second, "subscribed to containerd's events", func() error {
		if !strings.Contains(a.Logs(), `"msg":"subscribed to containerd's events"`) {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	time.Sleep(1500 * time.Millisecond)

	var took []time.Duration
	for i := range 3 {
		breakJump(t, ctx, pod.Netns)
		took = append(took, testbed.Eventually(t, time.Second, fmt.Sprintf("broken #%d within 1s of the deleted jump", i+1), verdicts(0, 1)))
		restoreJump(t, ctx, pod.Netns)
		took = append(took, testbed.Eventually(t, time.Second, fmt.Sprintf("ok #%d within 1s of the restored jump", i+1), verdicts(1, 0)))
	}
	t.Logf("rule change → verdict on /metrics in %v (period 1h, debounce 1s, polled every 100ms)", roundAll(took))
	if strings.Contains(a.Logs(), "nftables notifications stopped") {
		t.Errorf("the pod's socket failed:\n%s", a.Logs())
	}
	// No container started or exited meanwhile: the passes the rule changes asked for were
	// served the node's last listing, and still saw every change.
	if cached := metric(t, a.metrics, `meshdoctor_pod_listings_total{answered="cache"}`); cached < 1 {
		t.Errorf("no pass was served the cached listing (runtime %v)", metric(t, a.metrics, `meshdoctor_pod_listings_total{answered="runtime"}`))
	}
	a.stop(t)
}

// podCounts is a condition for testbed.Eventually: the agent's metrics count ok and broken pods.
func podCounts(t *testing.T, a *agentProc, ok, broken float64) func() error {
	return func() error {
		o, b := metric(t, a.metrics, `meshdoctor_pods{verdict="ok"}`), metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`)
		if o != ok || b != broken {
			return fmt.Errorf("%v ok, %v broken", o, b)
		}
		return nil
	}
}
