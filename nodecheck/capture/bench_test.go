package capture

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// BenchmarkCheck judges a real sidecar capture (replayed from testdata, so the figure is the
// judging alone, not the netlink read) by annotations — the baseline — and by istio-init's argv
// and env, which every istio-init-mode pod now goes through.
func BenchmarkCheck(b *testing.B) {
	dir := filepath.Join(capturesDir, "sidecar-default")
	init, err := capturedInit(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	reader := captureReader{dir: dir, addrs: addrsOf("")}
	snap, err := reader.ReadRules(b.Context(), dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		target nodecheck.Target
	}{
		{"annotations", nodecheck.Target{Netns: dir}},
		{"init-args", nodecheck.Target{Netns: dir, Containers: []nodecheck.Container{*init}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			chk := &Check{Reader: fixedSnapshot{snap}}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := chk.Check(b.Context(), c.target); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// fixedSnapshot hands the same snapshot to every check, as read once from a capture.
type fixedSnapshot struct{ snap rules.Snapshot }

func (f fixedSnapshot) ReadRules(context.Context, string) (rules.Snapshot, error) { return f.snap, nil }
