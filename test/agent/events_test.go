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
	a := startAgent(t, "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "1h", "--debounce", "200ms")
	// Subscribed: the agent sweeps the node once more for what it may have missed meanwhile.
	testbed.Eventually(t, time.Minute, "subscribed to containerd's events", func() error {
		if !strings.Contains(a.Logs(), `"why":"containerd event subscription (re)started"`) {
			return fmt.Errorf("no sweep after the subscription yet")
		}
		return nil
	})
	verdicts := func(ok, broken float64) func() error {
		return func() error {
			o, b := metric(t, a.metrics, `meshdoctor_pods{verdict="ok"}`), metric(t, a.metrics, `meshdoctor_pods{verdict="broken"}`)
			if o != ok || b != broken {
				return fmt.Errorf("%v ok, %v broken", o, b)
			}
			return nil
		}
	}
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
