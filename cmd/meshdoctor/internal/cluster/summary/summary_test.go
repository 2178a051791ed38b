package summary

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster"
	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster/rootcause"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// captured is testdata/cluster.json: what `meshdoctor cluster -o json` printed in test/cluster's
// end-to-end run (go test ./test/cluster -keep DIR): six nodes (two reported, one without an
// agent, one whose agent refused the connection, one whose agent was Pending, one whose agent
// never answered), the cluster's root causes and the API server's availability.
type captured struct {
	Nodes     []cluster.NodeResult `json:"nodes"`
	Findings  []nodecheck.Finding  `json:"findings"`
	APIServer *rootcause.APIServer `json:"apiServer"`
	IstioCNI  rootcause.CNIInstall `json:"istioCNI"`
	Notes     []string             `json:"notes"`
}

func load(t testing.TB) captured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c captured
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c captured) view(o Options, order []int) View {
	s := New(o)
	for _, i := range order {
		s.Add(c.Nodes[i])
	}
	return View{Summary: s.Result(), Findings: c.Findings, APIServer: c.APIServer, CNI: c.IstioCNI, Notes: c.Notes}
}

func goldenFile(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s; got:\n%s", path, got)
	}
}

// permutations calls f with every order of 0..n-1.
func permutations(n int, f func([]int)) {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	var rec func(k int)
	rec = func(k int) {
		if k == n {
			f(p)
			return
		}
		for i := k; i < n; i++ {
			p[k], p[i] = p[i], p[k]
			rec(k + 1)
			p[k], p[i] = p[i], p[k]
		}
	}
	rec(0)
}

// TestTableGolden: the summary table of the captured cluster, the same whatever order the nodes
// answered in; and with tight bounds, the first lines in name order and the rest counted.
func TestTableGolden(t *testing.T) {
	c := load(t)
	for _, tc := range []struct {
		golden string
		opts   Options
	}{
		{"cluster.golden", Options{}},
		{"cluster-bounded.golden", Options{MaxLines: 1, Top: 1}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var first []byte
			permutations(len(c.Nodes), func(order []int) {
				var b bytes.Buffer
				if err := WriteTable(&b, c.view(tc.opts, order)); err != nil {
					t.Fatal(err)
				}
				if first == nil {
					first = b.Bytes()
					return
				}
				if !bytes.Equal(first, b.Bytes()) {
					t.Fatalf("the table depends on the order the nodes came in (%v):\n%s", order, b.Bytes())
				}
			})
			goldenFile(t, tc.golden, first)
		})
	}
}

// TestCounts checks the fold's numbers against the captured reports themselves, independently
// of the table.
func TestCounts(t *testing.T) {
	c := load(t)
	order := make([]int, len(c.Nodes))
	for i := range order {
		order[i] = i
	}
	v := c.view(Options{}, order)
	r := v.Summary
	var pods, broken, reported int
	codes := map[nodecheck.Code]int{}
	for _, n := range c.Nodes {
		if n.Report == nil {
			continue
		}
		reported++
		for _, p := range n.Report.Pods {
			pods++
			if p.Verdict == nodecheck.VerdictBroken {
				broken++
			}
			seen := map[nodecheck.Code]bool{}
			for _, f := range p.Findings {
				if f.Severity != nodecheck.SeverityInfo && !seen[f.Code] {
					seen[f.Code] = true
					codes[f.Code]++
				}
			}
		}
	}
	if r.Nodes.Total != len(c.Nodes) || r.Nodes.Reported != reported || r.Pods.Total != pods || r.Pods.Broken != broken {
		t.Errorf("counts %+v %+v; the reports have %d nodes, %d reported, %d pods, %d broken", r.Nodes, r.Pods, len(c.Nodes), reported, pods, broken)
	}
	for _, cc := range r.Codes {
		if cc.Pods != codes[cc.Code] {
			t.Errorf("%s: %d pods, the reports have %d", cc.Code, cc.Pods, codes[cc.Code])
		}
	}
	if len(r.BrokenPods) != broken || r.BrokenPods[0].Code != nodecheck.PodSecurityBlocksInit {
		t.Errorf("broken pods %+v: want %d, PodSecurityBlocksInit (the root cause) first for shop/pay", r.BrokenPods, broken)
	}
	if !v.HasErrors() {
		t.Error("HasErrors is false with error findings")
	}
	o := New(Options{}).Outage()
	if o.Nodes != 0 {
		t.Errorf("empty summary's outage: %+v", o)
	}
	s := New(Options{})
	for _, n := range c.Nodes {
		s.Add(n)
	}
	if got := s.Outage(); got.Nodes != 1 || got.SampleNodes()[0] != "node-b" || got.Lines != 3 {
		t.Errorf("outage %+v, want node-b's 3 lines", got)
	}
}

// TestJSONStream: the streamed object is one valid JSON document with every node and the view,
// with nodes or without.
func TestJSONStream(t *testing.T) {
	c := load(t)
	for _, n := range []int{0, 1, len(c.Nodes)} {
		var b bytes.Buffer
		j := NewJSONStream(&b)
		for _, r := range c.Nodes[:n] {
			j.Node(r)
		}
		v := c.view(Options{}, nil)
		if err := j.Close(v); err != nil {
			t.Fatal(err)
		}
		var got struct {
			Nodes    []cluster.NodeResult `json:"nodes"`
			Summary  Result               `json:"summary"`
			Findings []nodecheck.Finding  `json:"findings"`
			Notes    []string             `json:"notes"`
		}
		if err := json.Unmarshal(b.Bytes(), &got); err != nil {
			t.Fatalf("%d nodes: not JSON: %v\n%s", n, err, b.String())
		}
		if len(got.Nodes) != n || len(got.Findings) != len(c.Findings) || got.Notes == nil {
			t.Errorf("%d nodes: decoded %d nodes, %d findings, notes %v", n, len(got.Nodes), len(got.Findings), got.Notes)
		}
		if n == len(c.Nodes) {
			want, _ := json.Marshal(c.Nodes)
			have, _ := json.Marshal(got.Nodes)
			if !bytes.Equal(want, have) {
				t.Error("the streamed nodes differ from the ones written")
			}
			if !strings.HasPrefix(b.String(), "{\n  \"nodes\": [\n    {") {
				t.Errorf("not indented as check -o json is:\n%.200s", b.String())
			}
		}
	}
}
