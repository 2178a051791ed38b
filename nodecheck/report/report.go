// Package report renders a node Report for people and for machines.
//
// People get a table for the terminal, machines the JSON of the design contract.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// WriteJSON writes the report as indented JSON.
func WriteJSON(w io.Writer, r *nodecheck.Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("writing JSON report: %w", err)
	}
	return nil
}

// WriteTable writes the report for a person at a terminal: a summary line, then one line per
// target with its verdict in words, and its findings indented under it with their remedy.
func WriteTable(w io.Writer, r *nodecheck.Report) error {
	var b strings.Builder
	counts := map[nodecheck.Verdict]int{}
	for _, p := range r.Pods {
		counts[p.Verdict]++
	}
	fmt.Fprintf(&b, "node %s: %d checked", orDash(r.Node), len(r.Pods))
	for _, v := range []nodecheck.Verdict{nodecheck.VerdictOK, nodecheck.VerdictBroken, nodecheck.VerdictUnknown, nodecheck.VerdictSkipped} {
		if counts[v] > 0 {
			fmt.Fprintf(&b, ", %d %s", counts[v], v)
		}
	}
	b.WriteString("\n")
	for _, p := range r.Pods {
		name := p.Netns
		if p.Name != "" {
			name = p.Namespace + "/" + p.Name
		}
		fmt.Fprintf(&b, "\n%-8s %s  [%s, %s]\n", verdictWord(p.Verdict), name, p.Capture.Mode, p.Capture.Backend)
		if p.Reason != "" {
			label := "why unknown"
			if p.Verdict == nodecheck.VerdictSkipped {
				label = "why skipped"
			}
			fmt.Fprintf(&b, "         %s: %s\n", label, p.Reason)
		}
		writeFindings(&b, p.Findings, "         ")
	}
	if len(r.Findings) > 0 {
		b.WriteString("\nnode findings:\n")
		writeFindings(&b, r.Findings, "  ")
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return nil
}

func writeFindings(b *strings.Builder, fs []nodecheck.Finding, indent string) {
	for _, f := range fs {
		fmt.Fprintf(b, "%s%s %s: %s\n", indent, SeverityMark(f.Severity), f.Code, f.Message)
		if f.Remedy != "" {
			fmt.Fprintf(b, "%s  remedy: %s\n", indent, f.Remedy)
		}
	}
}

func verdictWord(v nodecheck.Verdict) string {
	switch v {
	case nodecheck.VerdictOK:
		return "OK"
	case nodecheck.VerdictBroken:
		return "BROKEN"
	case nodecheck.VerdictUnknown:
		return "UNKNOWN"
	case nodecheck.VerdictSkipped:
		return "SKIPPED"
	}
	return strings.ToUpper(string(v))
}

// SeverityMark is how a finding's severity is shown in a table: "[error]", "[warn] ", "[info] ",
// all the same width.
func SeverityMark(s nodecheck.Severity) string {
	switch s {
	case nodecheck.SeverityError:
		return "[error]"
	case nodecheck.SeverityWarning:
		return "[warn] "
	}
	return "[info] "
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
