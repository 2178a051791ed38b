package innetns

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

func TestDoEntersAndLeaves(t *testing.T) {
	n := testbed.NewNetns(t)
	target, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	home, err := netns.GetFromPid(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()

	// Many concurrent entries: each fn must see the pod's namespace, and no goroutine outside
	// Do may ever find itself in it afterwards.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- Do(context.Background(), n.Path(), func() error {
				cur, err := netns.Get()
				if err != nil {
					return err
				}
				defer cur.Close()
				if !cur.Equal(target) {
					return errors.New("fn did not run in the target namespace")
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for range 64 {
		cur, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		if !cur.Equal(home) {
			t.Fatalf("a pooled thread was left in the pod's namespace (%s)", cur.UniqueId())
		}
		cur.Close()
	}
}

func TestDoReturnsFnError(t *testing.T) {
	n := testbed.NewNetns(t)
	want := errors.New("boom")
	if err := Do(context.Background(), n.Path(), func() error { return want }); !errors.Is(err, want) {
		t.Errorf("Do returned %v, want %v", err, want)
	}
}

func TestDoVanishedNamespace(t *testing.T) {
	err := Do(context.Background(), filepath.Join(t.TempDir(), "gone"), func() error { return nil })
	if !errors.Is(err, ErrNetnsGone) {
		t.Errorf("Do on a missing path: %v, want ErrNetnsGone", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "gone")); !errors.Is(err, ErrNetnsGone) {
		t.Errorf("Open on a missing path: %v, want ErrNetnsGone", err)
	}
}

func TestDoRefusesOtherFiles(t *testing.T) {
	testbed.RequirePrivileged(t)
	f := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, "/proc/self/ns/mnt"} {
		ran := false
		if err := Do(context.Background(), p, func() error { ran = true; return nil }); err == nil || ran {
			t.Errorf("Do(%s): err %v, fn ran %v; want a refusal", p, err, ran)
		}
	}
}

func TestDoCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Do(ctx, "/proc/self/ns/net", func() error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Do with a cancelled context: %v", err)
	}
}
