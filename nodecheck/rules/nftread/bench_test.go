package nftread

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// The benchmarks read one dual-stack namespace with Istio's default sidecar rules (iptables-nft,
// both families): BenchmarkRead in-process over netlink, BenchmarkExecSave the way it is done
// without this package, with nsenter and the two save binaries (and rules.ParseSave, so both
// end with the same RuleSets).
//
//	go test -run '^$' -bench . -benchmem ./nodecheck/rules/nftread/

func sidecarBenchNetns(b *testing.B) *testbed.Netns {
	b.Helper()
	ns := testbed.NewNetns(b)
	if err := ns.IstioIptablesEnv(context.Background(), dualStack, testbed.DefaultSidecarArgs()...); err != nil {
		b.Fatal(err)
	}
	return ns
}

func BenchmarkRead(b *testing.B) {
	ns := sidecarBenchNetns(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		res, err := Read(ctx, ns.Path())
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Sets) != 2 {
			b.Fatalf("%d rule sets, want 2", len(res.Sets))
		}
	}
}

func BenchmarkExecSave(b *testing.B) {
	ns := sidecarBenchNetns(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		for _, f := range []struct {
			cmd    string
			family rules.Family
		}{{"iptables-nft-save", rules.IPv4}, {"ip6tables-nft-save", rules.IPv6}} {
			out, err := exec.CommandContext(ctx, "nsenter", "--net="+ns.Path(), f.cmd).Output()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := rules.ParseSave(bytes.NewReader(out), rules.BackendNft, f.family); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkDecode is the share of a Read spent decoding (no kernel): a stored snapshot of the
// same rules.
func BenchmarkDecode(b *testing.B) {
	text, err := os.ReadFile(filepath.Join(snapshotDir, "sidecar-dual-stack.snap"))
	if err != nil {
		b.Fatal(err)
	}
	snap, err := parseSnapshot(string(text))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(snap); err != nil {
			b.Fatal(err)
		}
	}
}
