package socketlb_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf/cgroupbpftest"
	"github.com/meshdoctor/meshdoctor/nodecheck/socketlb"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// BenchmarkCheck is the check of one pod whose parent cgroup holds a connect program (a query per
// attach point, a walk up the hierarchy for where it is attached, one program lookup), beside
// the check of a pod with none (eight queries), and two baselines: reading /proc/self/cgroup
// (what finding any pod's cgroup costs) and a stat of the cgroup directory (the floor of any
// syscall on it).
func BenchmarkCheck(b *testing.B) {
	testbed.RequirePrivileged(b)
	parent := cgroupbpftest.NewCgroup(b, "")
	child := cgroupbpftest.NewCgroup(b, parent)
	bare := cgroupbpftest.NewCgroup(b, "")
	cgroupbpftest.AttachSockAddr(b, parent, cgroupbpf.Inet4Connect, "md_test_lb")
	for _, bc := range []struct {
		name   string
		cgroup string
		want   int
	}{{"with-program", child, 1}, {"without", bare, 0}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			target := nodecheck.Target{Name: "cart", SandboxID: "abc", Cgroup: bc.cgroup}
			for b.Loop() {
				res, err := socketlb.Check{}.Check(b.Context(), target)
				if err != nil || len(res.Findings) < bc.want {
					b.Fatalf("%+v %v", res, err)
				}
			}
		})
	}
	b.Run("baseline-read-proc-self-cgroup", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := os.ReadFile("/proc/self/cgroup"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-stat-cgroup", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := os.Stat(filepath.Join(child, "cgroup.procs")); err != nil {
				b.Fatal(err)
			}
		}
	})
}
