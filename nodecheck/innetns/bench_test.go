package innetns

import (
	"context"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// BenchmarkDo is one visit to a pod's namespace with nothing to do there: what every reader pays
// per visit. "reopen-home" is the baseline in the same run: the same visit reading the agent's own
// namespace from /proc on every call, as Do did before it kept it open.
func BenchmarkDo(b *testing.B) {
	n := testbed.NewNetns(b)
	ctx := context.Background()
	b.Run("do", func(b *testing.B) {
		for b.Loop() {
			if err := Do(ctx, n.Path(), func() error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reopen-home", func(b *testing.B) {
		for b.Loop() {
			if err := reopenHomeVisit(n.Path()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// reopenHomeVisit is Do's visit as it was: the target opened and checked, the home namespace
// opened on the visiting thread, entered and left, both closed.
func reopenHomeVisit(path string) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer target.Close()
	if !isNetns(int(target)) {
		return nil
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		if err := netns.Set(target); err != nil {
			orig.Close()
			runtime.UnlockOSThread()
			done <- err
			return
		}
		err = netns.Set(orig)
		orig.Close()
		if err != nil {
			done <- err
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	return <-done
}
