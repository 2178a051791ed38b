package testbed

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// AmbientInpodBinary is the test bed's writer of ambient mode's in-pod rules: a small program
// (test/tools/ambient-inpod) that calls Istio's own istio-cni code, iptables or native nftables,
// built by test/setup.sh into the cache.
const AmbientInpodBinary = "ambient-inpod"

// AmbientInpod returns the ambient-inpod binary for a test, skipping it (failing in CI) when
// test/setup.sh has not built it.
func AmbientInpod(tb testing.TB) string {
	tb.Helper()
	return cachedBinary(tb, AmbientInpodBinary)
}

// WriteAmbientRules writes ambient mode's in-pod rules into the network namespace at netnsPath
// the way the istio-cni node agent does when it enrols a pod: from the host, entering only the
// pod's network namespace, with Istio's own code. args are ambient-inpod's flags (--dns=false,
// --ingress, --virtual-interfaces=…, --ipv6=false, and --native-nftables for the tables istio-cni
// writes with native nftables instead of iptables rules).
func WriteAmbientRules(ctx context.Context, writer, netnsPath string, args ...string) error {
	argv := append([]string{"nsenter", "--net=" + netnsPath, "--", writer, "--netns", netnsPath}, args...)
	if _, err := (command{args: argv}).run(ctx); err != nil {
		return fmt.Errorf("writing ambient rules in %s: %w", filepath.Base(netnsPath), err)
	}
	return nil
}

// AmbientRules writes ambient mode's in-pod rules into the namespace (see WriteAmbientRules).
func (n *Netns) AmbientRules(ctx context.Context, writer string, args ...string) error {
	return WriteAmbientRules(ctx, writer, n.Path(), args...)
}

// ZtunnelSockets are the sockets ztunnel keeps inside an enrolled pod's network namespace (the
// ports istio.io/istio cni/pkg/config gives the in-pod rules: outbound 15001, inbound plaintext
// 15006, HBONE 15008, DNS 15053 over TCP and UDP), as "proto/port".
var ZtunnelSockets = []string{"tcp/15001", "tcp/15006", "tcp/15008", "tcp/15053", "udp/15053"}

// ZtunnelStandIn stands in for ztunnel in the network namespace at netnsPath: it binds
// ZtunnelSockets, less those in without, on the wildcard address (dual-stack), from the test
// process, until the test ends. The sockets accept nothing: a listener is all the rules need.
func ZtunnelStandIn(tb testing.TB, netnsPath string, without ...string) {
	tb.Helper()
	type closer interface{ Close() error }
	var socks []closer
	done := make(chan error, 1)
	go func() {
		// The thread is never handed back: the goroutine exits locked and Go ends the thread,
		// so nothing else ever runs in the pod's namespace.
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
		for _, s := range ZtunnelSockets {
			if slices.Contains(without, s) {
				continue
			}
			proto, port, _ := strings.Cut(s, "/")
			var c closer
			if proto == "udp" {
				c, err = net.ListenPacket("udp", ":"+port)
			} else {
				c, err = net.Listen("tcp", ":"+port)
			}
			if err != nil {
				done <- fmt.Errorf("%s: %w", s, err)
				return
			}
			socks = append(socks, c)
		}
		done <- nil
	}()
	err := <-done
	tb.Cleanup(func() {
		for _, c := range socks {
			c.Close()
		}
	})
	if err != nil {
		tb.Fatalf("stand-in ztunnel listeners in %s: %v", filepath.Base(netnsPath), err)
	}
}
