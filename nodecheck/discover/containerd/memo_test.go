package containerd_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// TestMemoFollowsTheNode: a Runtime that has discovered the node before (its memo warm) reports
// exactly what a new Runtime reports, after the node changed in every way the memo could miss: a
// container killed and its next attempt started, a pod created, a pod stopped, a pod removed. And
// the memo does its work and stays bounded: it holds a status for every running or exited
// container of the node, and nothing of a removed pod.
func TestMemoFollowsTheNode(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	restarted, err := n.RunPod(ctx, injected("restarted", "NET_ADMIN", "NET_RAW"))
	if err != nil {
		t.Fatal(err)
	}
	stopped, err := n.RunPod(ctx, injected("stopped", "NET_ADMIN", "NET_RAW"))
	if err != nil {
		t.Fatal(err)
	}
	removed, err := n.RunPod(ctx, injected("removed", "NET_ADMIN", "NET_RAW"))
	if err != nil {
		t.Fatal(err)
	}
	warm, err := containerd.New(n.Containerd.Address, "/")
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close()
	same := func(when string) {
		t.Helper()
		got, err := warm.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cold, err := containerd.New(n.Containerd.Address, "/")
		if err != nil {
			t.Fatal(err)
		}
		defer cold.Close()
		want, err := cold.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		if string(g) != string(w) {
			t.Errorf("%s: the warm memo reports\n%s\nwhere a new discovery reports\n%s", when, g, w)
		}
	}
	same("at first")
	same("nothing changed")
	if records, statuses := containerd.MemoSizes(warm); records != 9 || statuses != 9 {
		t.Errorf("memo holds %d records and %d statuses, want 9 and 9 (3 pods of istio-init, istio-proxy, app)", records, statuses)
	}

	if _, err := n.RestartContainer(ctx, restarted, "app"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.RunPod(ctx, injected("created", "NET_ADMIN", "NET_RAW")); err != nil {
		t.Fatal(err)
	}
	if err := n.StopPod(ctx, stopped); err != nil {
		t.Fatal(err)
	}
	if err := n.RemovePod(ctx, removed); err != nil {
		t.Fatal(err)
	}
	same("after a restart, a new pod, a stopped pod and a removed one")
	// Kept: restarted's 4 (the old app attempt exited), created's 3, and the stopped pod's 3
	// while containerd still lists them (kubelet removes them later); the removed pod's are gone.
	if records, statuses := containerd.MemoSizes(warm); records != 10 || statuses != 10 {
		t.Errorf("memo holds %d records and %d statuses, want 10 and 10 (nothing of the removed pod)", records, statuses)
	}
}
