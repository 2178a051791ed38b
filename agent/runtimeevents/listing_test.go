package runtimeevents_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/agent/runtimeevents"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

func names(ts []nodecheck.Target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Namespace+"/"+t.Name)
	}
	slices.Sort(out)
	return out
}

func sleeper(name string) kubelet.Container {
	return kubelet.Container{Name: name, Command: []string{"sleep", "3600"}}
}

// watchedListing is a Listing over containerd discovery of n, told by a Watch of n's events
// until the test ends.
func watchedListing(t *testing.T, ctx context.Context, n *kubelet.Node, maxAge time.Duration) *runtimeevents.Listing {
	t.Helper()
	rt, err := containerd.New(n.Containerd.Address, "/")
	if err != nil {
		t.Fatal(err)
	}
	l := &runtimeevents.Listing{Runtime: rt, MaxAge: maxAge}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- runtimeevents.Watch(watchCtx, n.Containerd.Address, func(string, string) {}, l, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	t.Cleanup(func() {
		stopWatch()
		<-watched
		_ = l.Close()
	})
	return l
}

// waitCached calls Discover until the listing serves from its cache (the subscription has
// settled), and returns that listing. Errors are retried: after a restart the runtime's client
// reconnects with a backoff of its own.
func waitCached(t *testing.T, ctx context.Context, l *runtimeevents.Listing) []nodecheck.Target {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		before := l.Stats().Cached
		ts, err := l.Discover(ctx)
		if err == nil && l.Stats().Cached > before {
			return ts
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no listing served from the cache within 30 s: %+v (last error: %v)", l.Stats(), lastErr)
	return nil
}

// TestListingFollowsTheNode runs a real containerd: the listing is kept while the event
// subscription is live and the node unchanged, and a pod made or removed, a container that
// exits, or containerd going away make the next Discover ask the runtime again.
func TestListingFollowsTheNode(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if _, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "first", Containers: []kubelet.Container{sleeper("app")}}); err != nil {
		t.Fatal(err)
	}
	l := watchedListing(t, ctx, n, time.Minute)

	cached := waitCached(t, ctx, l)
	if got := names(cached); !slices.Equal(got, []string{"shop/first"}) {
		t.Fatalf("cached listing %v, want [shop/first]", got)
	}
	// The cache answers alike, and its slice is the caller's.
	cached[0].Name = "changed-by-the-caller"
	again, _ := l.Discover(ctx)
	if got := names(again); !slices.Equal(got, []string{"shop/first"}) {
		t.Fatalf("after the caller changed its copy the listing is %v", got)
	}

	// A pod made: its events drop the listing, and the next Discover lists it.
	second, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "second", Containers: []kubelet.Container{sleeper("app")}})
	if err != nil {
		t.Fatal(err)
	}
	assertEventually(t, ctx, l, []string{"shop/first", "shop/second"})

	// A container that exits changes its pod's listing (its state): the cache is dropped.
	beforeExit := waitCached(t, ctx, l)
	idx := slices.IndexFunc(beforeExit, func(t nodecheck.Target) bool { return t.Name == "second" })
	if st := beforeExit[idx].Containers; len(st) != 1 || st[0].State != nodecheck.ContainerRunning {
		t.Fatalf("second's containers before the exit: %+v", st)
	}
	if _, err := n.Containerd.Ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", second.ContainerIDs["app"]); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitExit(ctx, second.ContainerIDs["app"]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ts, err := l.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(ts, func(t nodecheck.Target) bool { return t.Name == "second" })
		if i >= 0 && len(ts[i].Containers) == 1 && ts[i].Containers[0].State == nodecheck.ContainerExited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the listing still shows second's app as it was before it exited: %+v (%+v)", ts, l.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A pod removed.
	if err := n.RemovePod(ctx, second); err != nil {
		t.Fatal(err)
	}
	assertEventually(t, ctx, l, []string{"shop/first"})

	// containerd gone: the subscription ends, and nothing is served from the cache any more.
	waitCached(t, ctx, l)
	if err := n.Containerd.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		before := l.Stats()
		_, err := l.Discover(ctx)
		if l.Stats().Listed > before.Listed {
			if err == nil {
				t.Fatal("Discover with containerd killed: no error")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with containerd killed the listing is still served from the cache (%+v)", l.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := n.Containerd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := names(waitCached(t, ctx, l)); !slices.Equal(got, []string{"shop/first"}) {
		t.Fatalf("after containerd's restart the listing is %v", got)
	}
}

// assertEventually waits for the listing to show want, within a few seconds (events arrive a
// moment after the CRI call that made them returns).
func assertEventually(t *testing.T, ctx context.Context, l *runtimeevents.Listing, want []string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ts, err := l.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(ts); slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("listing %v, want %v (%+v)", names(ts), want, l.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestListingMaxAge: a listing older than MaxAge is never served, live subscription or not.
func TestListingMaxAge(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	l := watchedListing(t, ctx, n, 500*time.Millisecond)
	waitCached(t, ctx, l)
	time.Sleep(600 * time.Millisecond)
	before := l.Stats()
	if _, err := l.Discover(ctx); err != nil {
		t.Fatal(err)
	}
	if after := l.Stats(); after.Listed != before.Listed+1 {
		t.Fatalf("a listing older than MaxAge was served: %+v → %+v", before, after)
	}

	// A caller that asks for the runtime's listing as it is now gets it, cache or not.
	waitCached(t, ctx, l)
	before = l.Stats()
	if _, err := l.Discover(discover.Fresh(ctx)); err != nil {
		t.Fatal(err)
	}
	if after := l.Stats(); after.Listed != before.Listed+1 {
		t.Fatalf("a fresh listing was served from the cache: %+v → %+v", before, after)
	}

	// Without a subscription nothing is ever kept.
	plain := &runtimeevents.Listing{Runtime: l.Runtime, MaxAge: time.Hour}
	for range 3 {
		if _, err := plain.Discover(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := plain.Stats(); st.Cached != 0 || st.Listed != 3 {
		t.Fatalf("without a subscription: %+v, want 3 listed, 0 cached", st)
	}
}
