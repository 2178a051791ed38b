package debughttp

import (
	"html/template"
	"io"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// page is the node at a glance: counts by verdict, node findings, then one row per pod, broken
// first, with its findings and remedies. No script, no external resources: it must work through
// `kubectl port-forward` on an air-gapped cluster. It is parsed on first use, not at process
// start: every meshdoctor command links this package, and `check` never serves the page.
var page = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("page").Funcs(template.FuncMap{
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return time.Since(t).Round(time.Second).String() + " ago"
		},
	}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meshdoctor · {{.Node}}</title>
<meta http-equiv="refresh" content="30">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} .sub{color:#666;margin-bottom:1em}
.counts span{display:inline-block;padding:.3em .8em;margin-right:.5em;border-radius:4px;font-weight:600}
.ok{background:#d9f2dd;color:#165c26}.broken{background:#f9d6d5;color:#8a1c17}
.unknown{background:#fbeec9;color:#6b4e00}.skipped{background:#e8e8e8;color:#555}
table{border-collapse:collapse;width:100%;margin-top:1em}
th,td{text-align:left;vertical-align:top;padding:.4em .6em;border-bottom:1px solid #ddd}
th{background:#f4f4f4} td.v{font-weight:600;white-space:nowrap}
.f{margin:.2em 0}.code{font-family:monospace;font-weight:600}.remedy{color:#555;font-size:.92em}
.error{color:#8a1c17}.warning{color:#6b4e00}.info{color:#444} a{color:#1a4fa0}
</style></head><body>
<h1>meshdoctor · node {{.Node}}</h1>
<div class="sub">last sweep {{ago .LastSweep}} · <a href="debug/report">report (JSON)</a> · <a href="debug/node">node checks (JSON)</a> · <a href="metrics">metrics</a></div>
<div class="counts">{{range .Counts}}<span class="{{.Verdict}}">{{.N}} {{.Verdict}}</span>{{end}}</div>
{{if .NodeFindings}}<h2>Node</h2>{{range .NodeFindings}}<div class="f {{.Severity}}"><span class="code">{{.Code}}</span> [{{.Severity}}] {{.Message}}{{if .Remedy}}<div class="remedy">remedy: {{.Remedy}}</div>{{end}}</div>{{end}}{{end}}
<table><thead><tr><th>Pod</th><th>Verdict</th><th>Capture</th><th>Findings</th><th>Checked</th></tr></thead><tbody>
{{range .Pods}}<tr id="{{.Key}}"><td>{{if .Target.Name}}<a href="debug/pods/{{.Target.Namespace}}/{{.Target.Name}}">{{.Key}}</a>{{else}}{{.Key}}{{end}}</td>
<td class="v {{.Outcome.Pod.Verdict}}">{{.Outcome.Pod.Verdict}}</td>
<td>{{.Outcome.Pod.Capture.Mode}} · {{.Outcome.Pod.Capture.Backend}}{{with .Outcome.Pod.Capture.Intent}}<br><span class="remedy">intent: {{.}}</span>{{end}}</td>
<td>{{range .Outcome.Pod.Findings}}<div class="f {{.Severity}}"><span class="code">{{.Code}}</span> {{.Message}}{{if .Remedy}}<div class="remedy">remedy: {{.Remedy}}</div>{{end}}</div>{{else}}{{if .Outcome.Pod.Reason}}{{.Outcome.Pod.Reason}}{{else}}—{{end}}{{end}}</td>
<td>{{ago .Checked}}<br><span class="remedy">{{.Why}}</span></td></tr>
{{else}}<tr><td colspan="5">no pods seen yet</td></tr>{{end}}
</tbody></table></body></html>
`))
})

type pageCount struct {
	Verdict nodecheck.Verdict
	N       int
}

func writePage(w io.Writer, src Source) error {
	pods := src.Pods()
	rank := map[nodecheck.Verdict]int{nodecheck.VerdictBroken: 0, nodecheck.VerdictUnknown: 1, nodecheck.VerdictOK: 2, nodecheck.VerdictSkipped: 3}
	n := map[nodecheck.Verdict]int{}
	for _, p := range pods {
		n[p.Outcome.Pod.Verdict]++
	}
	sorted := make([]agent.PodState, 0, len(pods))
	for _, v := range []nodecheck.Verdict{nodecheck.VerdictBroken, nodecheck.VerdictUnknown, nodecheck.VerdictOK, nodecheck.VerdictSkipped} {
		for _, p := range pods {
			if rank[p.Outcome.Pod.Verdict] == rank[v] && p.Outcome.Pod.Verdict == v {
				sorted = append(sorted, p)
			}
		}
	}
	var counts []pageCount
	for _, v := range []nodecheck.Verdict{nodecheck.VerdictBroken, nodecheck.VerdictUnknown, nodecheck.VerdictOK, nodecheck.VerdictSkipped} {
		counts = append(counts, pageCount{v, n[v]})
	}
	return page().Execute(w, struct {
		Node         string
		LastSweep    time.Time
		Counts       []pageCount
		NodeFindings []nodecheck.Finding
		Pods         []agent.PodState
	}{src.Name(), src.LastSweep(), counts, src.Node().Findings, sorted})
}
