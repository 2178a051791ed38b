package summary

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster"
	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster/rootcause"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/report"
)

// View is everything the cluster view shows once every node is in.
type View struct {
	Summary Result `json:"summary"`
	// Findings are the cluster-level root causes.
	Findings  []nodecheck.Finding  `json:"findings"`
	APIServer *rootcause.APIServer `json:"apiServer,omitempty"`
	// CNI says whether istio-cni runs anywhere in the cluster.
	CNI   rootcause.CNIInstall `json:"istioCNI,omitempty"`
	Notes []string             `json:"notes"`
}

// HasErrors reports whether a pod, node or cluster finding has severity error.
func (v View) HasErrors() bool {
	if v.Summary.HasErrors {
		return true
	}
	for _, f := range v.Findings {
		if f.Severity == nodecheck.SeverityError {
			return true
		}
	}
	return false
}

// WriteTable writes the view for a person: the counts, findings by code, the worst nodes, the
// nodes without a report, the cluster's root causes, node findings, one line per broken pod with
// its remedy, the API server's availability and what could not be read. Empty sections are left
// out.
func WriteTable(w io.Writer, v View) error {
	var b strings.Builder
	r := v.Summary
	n := r.Nodes
	fmt.Fprintf(&b, "meshdoctor cluster: %d node(s), %d reported", n.Total, n.Reported)
	for _, c := range []struct {
		n    int
		what string
	}{{n.NoAgent, "without an agent"}, {n.AgentNotRunning, "agent not running"}, {n.NotAnswering, "not answering"}} {
		if c.n > 0 {
			fmt.Fprintf(&b, ", %d %s", c.n, c.what)
		}
	}
	p := r.Pods
	fmt.Fprintf(&b, "\npods: %d checked", p.Total)
	for _, c := range []struct {
		n    int
		what string
	}{{p.OK, "ok"}, {p.Broken, "broken"}, {p.Unknown, "unknown"}, {p.Skipped, "skipped"}} {
		if c.n > 0 {
			fmt.Fprintf(&b, ", %d %s", c.n, c.what)
		}
	}
	b.WriteString("\n")

	if len(r.Codes) > 0 {
		section(&b, "FINDINGS BY CODE (errors and warnings)")
		tw := table(&b)
		fmt.Fprintln(tw, "CODE\tSEVERITY\tPODS\tNODES")
		for _, c := range r.Codes {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", c.Code, c.Severity, c.Pods, c.Nodes)
		}
		_ = tw.Flush()
	}
	if len(r.WorstNodes) > 0 {
		section(&b, "WORST NODES")
		tw := table(&b)
		fmt.Fprintln(tw, "NODE\tBROKEN\tCHECKED\tNODE ERRORS\tCODES")
		for _, s := range r.WorstNodes {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", s.Node, s.Broken, s.Checked, s.Errors, joinCodes(s.Codes))
		}
		_ = tw.Flush()
	}
	if len(r.NodesWithoutReport) > 0 {
		section(&b, "NODES WITHOUT A REPORT")
		tw := table(&b)
		fmt.Fprintln(tw, "NODE\tSTATUS\tWHY")
		for _, s := range r.NodesWithoutReport {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Node, s.Status, s.Error)
		}
		_ = tw.Flush()
		more(&b, r.OtherSilentNodes, "node(s)")
	}
	if len(v.Findings) > 0 {
		section(&b, "CLUSTER ROOT CAUSES")
		for _, f := range v.Findings {
			fmt.Fprintf(&b, "%s %s: %s\n", report.SeverityMark(f.Severity), f.Code, f.Message)
			if f.Remedy != "" {
				fmt.Fprintf(&b, "  remedy: %s\n", f.Remedy)
			}
		}
	}
	if len(r.NodeFindings) > 0 {
		section(&b, "NODE FINDINGS")
		for _, f := range r.NodeFindings {
			fmt.Fprintf(&b, "%s %s %s: %s\n", f.Node, report.SeverityMark(f.Severity), f.Code, f.Message)
			if f.Remedy != "" {
				fmt.Fprintf(&b, "  remedy: %s\n", f.Remedy)
			}
		}
		more(&b, r.OtherNodeFindings, "node finding(s)")
	}
	if len(r.BrokenPods) > 0 {
		section(&b, "BROKEN PODS (the remedy of each pod's root cause)")
		tw := table(&b)
		fmt.Fprintln(tw, "NODE\tPOD\tCODE\tREMEDY")
		for _, bp := range r.BrokenPods {
			code := string(bp.Code)
			if len(bp.Codes) > 1 {
				code += fmt.Sprintf(" (+%d)", len(bp.Codes)-1)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", bp.Node, bp.Pod, code, bp.Remedy)
		}
		_ = tw.Flush()
		more(&b, r.OtherBrokenPods, "broken pod(s)")
	}
	if a := v.APIServer; a != nil {
		section(&b, "API SERVER")
		b.WriteString(apiServerLine(*a) + "\n")
	}
	if len(v.Notes) > 0 {
		section(&b, "NOT READ")
		for _, n := range v.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing the cluster summary: %w", err)
	}
	return nil
}

func apiServerLine(a rootcause.APIServer) string {
	var s string
	switch n := len(a.Endpoints); {
	case a.EndpointsError != "":
		s = "kubernetes Service endpoints not read: " + a.EndpointsError
	case n == 0:
		s = "the kubernetes Service has no ready endpoint"
	case n == 1:
		s = "1 endpoint of the kubernetes Service (" + a.Endpoints[0] + "): not highly available"
	default:
		s = fmt.Sprintf("%d endpoints of the kubernetes Service (%s)", n, strings.Join(a.Endpoints, ", "))
	}
	switch {
	case a.IstiodError != "":
		s += "; istiod not read: " + a.IstiodError
	case len(a.Istiod) == 0:
		s += "; no istiod Deployment (" + rootcause.IstiodSelector + ")"
	default:
		var parts []string
		for _, d := range a.Istiod {
			parts = append(parts, fmt.Sprintf("%s/%s %d/%d ready", d.Namespace, d.Name, d.Ready, d.Replicas))
		}
		s += "; istiod: " + strings.Join(parts, ", ")
	}
	return s
}

func section(b *strings.Builder, title string) { fmt.Fprintf(b, "\n%s\n", title) }

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func more(b *strings.Builder, n int, what string) {
	if n > 0 {
		fmt.Fprintf(b, "… and %d more %s (-o json lists every node)\n", n, what)
	}
}

func joinCodes(cs []nodecheck.Code) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}

// JSONStream writes the cluster view as one JSON object whose "nodes" are written as they come,
// so that no report is held: {"nodes": [...], "summary": {...}, "findings": [...], "apiServer":
// {...}, "istioCNI": "...", "notes": [...]}. Nodes are in the order they were gathered.
type JSONStream struct {
	w     io.Writer
	nodes int
	err   error
}

// NewJSONStream starts the object.
func NewJSONStream(w io.Writer) *JSONStream {
	j := &JSONStream{w: w}
	_, j.err = io.WriteString(w, "{\n  \"nodes\": [")
	return j
}

// Node writes one node's result.
func (j *JSONStream) Node(r cluster.NodeResult) {
	if j.err != nil {
		return
	}
	data, err := json.MarshalIndent(r, "    ", "  ")
	if err != nil {
		j.err = fmt.Errorf("encoding node %s: %w", r.Node, err)
		return
	}
	sep := ",\n    "
	if j.nodes == 0 {
		sep = "\n    "
	}
	j.nodes++
	if _, err := io.WriteString(j.w, sep); err != nil {
		j.err = err
		return
	}
	_, j.err = j.w.Write(data)
}

// Close writes the rest of the view and ends the object.
func (j *JSONStream) Close(v View) error {
	if j.err != nil {
		return fmt.Errorf("writing the cluster JSON: %w", j.err)
	}
	if v.Findings == nil {
		v.Findings = []nodecheck.Finding{}
	}
	if v.Notes == nil {
		v.Notes = []string{}
	}
	rest, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return fmt.Errorf("encoding the cluster summary: %w", err)
	}
	end := "\n  ],\n  "
	if j.nodes == 0 {
		end = "],\n  "
	}
	// rest is an object: splice its members after "nodes".
	body := strings.TrimSpace(string(rest))
	body = strings.TrimSuffix(strings.TrimPrefix(body, "{"), "}")
	if _, err := io.WriteString(j.w, end+strings.TrimSpace(body)+"\n}\n"); err != nil {
		return fmt.Errorf("writing the cluster JSON: %w", err)
	}
	return nil
}
