package testbed

import (
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// CountingListener is a TCP listener inside a namespace that accepts and counts every
// connection: a proxy's stand-in for proving that a probe completed no handshake.
type CountingListener struct {
	ln       net.Listener
	accepted atomic.Int64
}

// Accepted is how many connections the listener has accepted so far.
func (l *CountingListener) Accepted() int64 { return l.accepted.Load() }

// ListenIn listens on network and addr (as net.Listen takes them) inside the network namespace
// at netnsPath, until the test ends. The socket is made on a thread that entered the namespace
// and is never handed back, so the socket is the namespace's for its whole life.
func ListenIn(tb testing.TB, netnsPath, network, addr string) net.Listener {
	tb.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The goroutine exits locked and Go ends the thread.
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(netnsPath)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- result{err: err}
			return
		}
		ln, err := net.Listen(network, addr)
		done <- result{ln, err}
	}()
	r := <-done
	if r.err != nil {
		tb.Fatalf("listening on %s %s in %s: %v", network, addr, filepath.Base(netnsPath), r.err)
	}
	tb.Cleanup(func() { r.ln.Close() })
	return r.ln
}

// ListenPacketIn binds a UDP socket (network "udp", "udp4" or "udp6") on addr inside the network
// namespace at netnsPath, until the test ends.
func ListenPacketIn(tb testing.TB, netnsPath, network, addr string) net.PacketConn {
	tb.Helper()
	type result struct {
		pc  net.PacketConn
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The goroutine exits locked and Go ends the thread.
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(netnsPath)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- result{err: err}
			return
		}
		pc, err := net.ListenPacket(network, addr)
		done <- result{pc, err}
	}()
	r := <-done
	if r.err != nil {
		tb.Fatalf("binding %s %s in %s: %v", network, addr, filepath.Base(netnsPath), r.err)
	}
	tb.Cleanup(func() { r.pc.Close() })
	return r.pc
}

// ListenCounting listens on TCP port (both families, the wildcard address) inside the network
// namespace at netnsPath until the test ends.
func ListenCounting(tb testing.TB, netnsPath string, port int) *CountingListener {
	tb.Helper()
	ln := ListenIn(tb, netnsPath, "tcp", fmt.Sprintf(":%d", port))
	l := &CountingListener{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			c.Close()
		}
	}()
	return l
}
