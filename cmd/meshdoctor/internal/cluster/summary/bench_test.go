package summary

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Gathering N = 2000 reports through a real API server's proxy cannot be benchmarked here (one
// API server, a few agents), so the benchmark measures what must stay bounded as the cluster
// grows: the fold over N nodes' reports as they arrive, each decoded from its JSON as the
// gatherer decodes it, beside the baseline of keeping every report and summarising at the end.
// Each node has podsPerNode pods copied from the captured node reports (a quarter broken). The
// metric peak-heap-MiB is the largest live heap seen, sampled after a GC every 100 nodes.

const podsPerNode = 40

// nodeTemplate returns a synthetic node's report as an agent serves it, for node "node-00000".
func nodeTemplate(tb testing.TB, c captured) []byte {
	tb.Helper()
	var ok, broken nodecheck.PodReport
	var node *nodecheck.Report
	for _, n := range c.Nodes {
		if n.Report == nil {
			continue
		}
		for _, p := range n.Report.Pods {
			switch p.Verdict {
			case nodecheck.VerdictOK:
				ok = p
			case nodecheck.VerdictBroken:
				if p.Name != "" {
					broken = p
				}
			}
		}
		if node == nil || len(n.Report.Findings) > len(node.Findings) {
			node = n.Report
		}
	}
	rep := nodecheck.Report{Node: "node-00000", Findings: node.Findings}
	for j := range podsPerNode {
		p := ok
		if j%4 == 0 {
			p = broken
		}
		p.Name = p.Name + "-" + strconv.Itoa(j)
		rep.Pods = append(rep.Pods, p)
	}
	data, err := json.Marshal(rep)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// fetched is node i's report as it arrives: the template's bytes under the node's name, decoded as
// the gatherer decodes them.
func fetched(tb testing.TB, template []byte, i int) cluster.NodeResult {
	data := bytes.Replace(template, []byte(`"node-00000"`), fmt.Appendf(nil, "%q", fmt.Sprintf("node-%05d", i)), 1)
	var rep nodecheck.Report
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&rep); err != nil {
		tb.Fatal(err)
	}
	return cluster.NodeResult{Node: rep.Node, Status: cluster.StatusReported, Report: &rep}
}

// peakHeap samples the live heap after a collection.
type peakHeap struct{ max uint64 }

func (p *peakHeap) sample() {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	p.max = max(p.max, m.HeapAlloc)
}

func BenchmarkSummary(b *testing.B) {
	template := nodeTemplate(b, load(b))
	for _, n := range []int{500, 2000, 8000} {
		// Streaming: what `meshdoctor cluster` does; each report is dropped once folded in.
		b.Run(fmt.Sprintf("streaming/nodes=%d", n), func(b *testing.B) {
			var peak peakHeap
			for b.Loop() {
				s := New(Options{})
				for i := range n {
					s.Add(fetched(b, template, i))
					if i%100 == 0 {
						peak.sample()
					}
				}
				_ = s.Result()
			}
			b.ReportMetric(float64(peak.max)/(1<<20), "peak-heap-MiB")
		})
		// Baseline: every report kept, then summarised.
		b.Run(fmt.Sprintf("retain-all/nodes=%d", n), func(b *testing.B) {
			var peak peakHeap
			for b.Loop() {
				all := make([]cluster.NodeResult, 0, n)
				for i := range n {
					all = append(all, fetched(b, template, i))
					if i%100 == 0 {
						peak.sample()
					}
				}
				s := New(Options{})
				for _, r := range all {
					s.Add(r)
				}
				peak.sample()
				_ = s.Result()
			}
			b.ReportMetric(float64(peak.max)/(1<<20), "peak-heap-MiB")
		})
	}
}
