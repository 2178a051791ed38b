// Package innetns runs a function inside another network namespace, safely.
//
// The function runs on a locked OS thread of its own, so no other goroutine ever runs in the
// pod's namespace, and that thread is thrown away (never returned to Go's pool) if switching back
// to the original namespace fails.
package innetns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNetnsGone is wrapped by errors for a namespace path that no longer exists (the pod went away
// between discovery and the check): callers report the pod as unknown, not broken.
var ErrNetnsGone = errors.New("network namespace is gone")

// Do runs fn with the calling OS thread inside the network namespace at path, and returns fn's
// error. fn must not start goroutines that expect to be in the namespace: only its own thread is.
// Child processes started by fn inherit the namespace, as they inherit the thread's.
func Do(ctx context.Context, path string, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("opening network namespace %s: %w: %w", path, ErrNetnsGone, err)
		}
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer target.Close()
	if !isNetns(int(target)) {
		return fmt.Errorf("%s is not a network namespace", path)
	}

	done := make(chan error, 1)
	go func() {
		// The goroutine owns its thread for its whole life. Only when the thread is back in
		// the original namespace is it unlocked and handed back to the scheduler; otherwise
		// the goroutine exits still locked and Go terminates the thread.
		runtime.LockOSThread()
		// Every descriptor of this call is closed before the result is sent: Do's caller sees
		// none of ours, only the process's own namespace stays open (home).
		orig, err := home.get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("reading the agent's own network namespace: %w", err)
			return
		}
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(fnErr, fmt.Errorf("returning from network namespace %s (thread discarded): %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// home is the process's own network namespace, the one every thread runs in while no Do holds
// it: Do returns a thread to Go's pool only once it is back there, and Go starts new threads from
// a clean template thread, never from a locked one. It is opened once, from a thread that has just
// been locked and not yet moved (so it is in that namespace), and kept for the process's life:
// reading it again on every visit cost four system calls and a walk of /proc. An error is not
// kept: the next Do tries again.
var home homeNetns

type homeNetns struct {
	mu sync.Mutex
	h  netns.NsHandle
	ok bool
}

// get must be called on a locked thread that is still in the process's own namespace.
func (n *homeNetns) get() (netns.NsHandle, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ok {
		return n.h, nil
	}
	h, err := netns.Get()
	if err != nil {
		return netns.None(), err
	}
	n.h, n.ok = h, true
	return h, nil
}

// Open returns a file descriptor for the network namespace at path, for APIs that take one
// (netlink sockets can be opened in a namespace without switching threads). The caller closes it.
func Open(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), fmt.Errorf("opening network namespace %s: %w: %w", path, ErrNetnsGone, err)
		}
		return netns.None(), fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	if !isNetns(int(h)) {
		h.Close()
		return netns.None(), fmt.Errorf("%s is not a network namespace", path)
	}
	return h, nil
}

func isNetns(fd int) bool {
	// A bind-mounted /var/run/netns file or /proc/PID/ns/net; refuse a mount or PID namespace
	// (setns would fail anyway, with a less helpful error).
	kind, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	return err == nil && kind == unix.CLONE_NEWNET
}
