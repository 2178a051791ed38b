package nftread

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
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
	snap := storedSidecarSnapshot(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(snap); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadUnchanged is the agent's re-check of a pod whose rules have not changed: "full"
// dumps and decodes as every Read did before the cache, "cached" is a Cache serving the same
// namespace from its confirmed entry (GETGEN, then a copy of the entry's Result). Both open
// the netlink socket in the namespace, as every Read does; the "-here" pair is ReadHere on a
// thread already in the namespace, as nsread reads it (the socket is then a plain socket(2)).
//
//	go test -run '^$' -bench ReadUnchanged -benchmem ./nodecheck/rules/nftread/
func BenchmarkReadUnchanged(b *testing.B) {
	ns := sidecarBenchNetns(b)
	ctx := context.Background()
	requireCookie(b, ctx, ns.Path())
	want := fullRead(b, ctx, ns.Path())
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Read(ctx, ns.Path()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		c, clk := newTestCache()
		prime(b, ctx, c, clk, ns.Path())
		requireEqual(b, "hit", readVia(b, ctx, c, ns.Path(), true), want)
		hits := c.Stats().Hits
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Read(ctx, ns.Path()); err != nil {
				b.Fatal(err)
			}
		}
		if s := c.Stats(); s.Hits-hits != uint64(b.N) {
			b.Fatalf("%d hits in %d reads: %+v", s.Hits-hits, b.N, s)
		}
	})
	here := func(b *testing.B, read func() error) {
		b.ReportAllocs()
		if err := innetns.Do(ctx, ns.Path(), func() error {
			for b.Loop() {
				if err := read(); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("full-here", func(b *testing.B) {
		here(b, func() error { _, err := ReadHere(ctx, ns.Path()); return err })
	})
	b.Run("cached-here", func(b *testing.B) {
		c, clk := newTestCache()
		prime(b, ctx, c, clk, ns.Path())
		hits := c.Stats().Hits
		here(b, func() error { _, err := c.ReadHere(ctx, ns.Path()); return err })
		if s := c.Stats(); s.Hits-hits != uint64(b.N) {
			b.Fatalf("%d hits in %d reads: %+v", s.Hits-hits, b.N, s)
		}
	})
}

// BenchmarkCloneResult is the copy a hit hands out, of the same rules: its B/op is about what
// one cache entry holds.
func BenchmarkCloneResult(b *testing.B) {
	res, err := decode(storedSidecarSnapshot(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = cloneResult(res)
	}
}

// storedSidecarSnapshot is the stored snapshot of Istio's default dual-stack sidecar rules.
func storedSidecarSnapshot(b *testing.B) *snapshot {
	b.Helper()
	text, err := os.ReadFile(filepath.Join(snapshotDir, "sidecar-dual-stack.snap"))
	if err != nil {
		b.Fatal(err)
	}
	snap, err := parseSnapshot(string(text))
	if err != nil {
		b.Fatal(err)
	}
	return snap
}
