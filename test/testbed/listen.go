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

// onNetnsThread runs fn on a new OS thread that has entered the network namespace at netnsPath;
// the thread is never handed back (the goroutine exits locked and Go ends the thread), so a socket
// fn makes is the namespace's for its whole life.
func onNetnsThread(netnsPath string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(netnsPath)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// ListenIn listens on network and addr (as net.Listen takes them) inside the network namespace
// at netnsPath, until the test ends.
func ListenIn(tb testing.TB, netnsPath, network, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	err := onNetnsThread(netnsPath, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listening on %s %s in %s: %v", network, addr, filepath.Base(netnsPath), err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// ListenPacketIn binds a UDP socket (network "udp", "udp4" or "udp6") on addr inside the network
// namespace at netnsPath, until the test ends.
func ListenPacketIn(tb testing.TB, netnsPath, network, addr string) net.PacketConn {
	tb.Helper()
	var pc net.PacketConn
	err := onNetnsThread(netnsPath, func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("binding %s %s in %s: %v", network, addr, filepath.Base(netnsPath), err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc
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
