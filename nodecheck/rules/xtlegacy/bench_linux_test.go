package xtlegacy

import (
	"os/exec"
	"testing"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// benchNetns is a pod namespace with Istio's default sidecar rules in legacy iptables, dual
// stack, so both families have rules to read.
func benchNetns(b *testing.B) *testbed.Netns {
	b.Helper()
	ns := newNetns(b)
	ctx := testContext(b)
	if err := ns.IstioIptablesEnv(ctx, []string{"ISTIO_DUAL_STACK=true"}, legacyArgs(testbed.DefaultSidecarArgs()...)...); err != nil {
		b.Fatal(err)
	}
	return ns
}

// BenchmarkRead reads both families' legacy tables of a sidecar pod in-process.
func BenchmarkRead(b *testing.B) {
	ns := benchNetns(b)
	ctx := testContext(b)
	b.ReportAllocs()
	for b.Loop() {
		sets, err := Read(ctx, ns.Path())
		if err != nil {
			b.Fatal(err)
		}
		if len(sets) != 2 {
			b.Fatalf("%d rule sets, want IPv4 and IPv6", len(sets))
		}
	}
}

// BenchmarkExecSave is the baseline Read replaces: what a reader built on the iptables binaries
// does for the same namespace (and it still has to parse the text afterwards).
func BenchmarkExecSave(b *testing.B) {
	ns := benchNetns(b)
	ctx := testContext(b)
	b.ReportAllocs()
	for b.Loop() {
		for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
			out, err := exec.CommandContext(ctx, "nsenter", "--net="+ns.Path(), save).Output()
			if err != nil {
				b.Fatal(err)
			}
			if len(out) == 0 {
				b.Fatalf("%s printed nothing", save)
			}
		}
	}
}
