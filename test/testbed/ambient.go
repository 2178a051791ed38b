package testbed

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
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
