// Command fault-report turns the output of the fault suite (test/agent's TestFault* tests, run
// with -v) into the fault table of docs/reliability.md: per fault what the agent did, what it
// reported and what it lost, with the figures the run measured.
//
// Each test prints one line `FAULT-REPORT {json}` once its assertions have passed; a fault whose
// test did not pass (no `--- PASS: TestName` line) is an error, never a row. The table goes
// between the markers `<!-- fault-table:begin -->` and `<!-- fault-table:end -->` of the doc.
//
// Usage (what `make fault-report` runs):
//
//	go run ./test/cmd/fault-report -log bin/faults.log -doc docs/reliability.md
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/test/cmd/internal/doctable"
)

const (
	beginMarker = "<!-- fault-table:begin -->"
	endMarker   = "<!-- fault-table:end -->"
	reportTag   = "FAULT-REPORT "
)

// fault is one test's record (test/agent faultRecord).
type fault struct {
	Fault    string `json:"fault"`
	Did      string `json:"did"`
	Reported string `json:"reported"`
	Lost     string `json:"lost"`
	Test     string `json:"test"`
}

// parseLog reads the faults of a `go test -v` log, in the order they ran, and checks that each
// one's test passed.
func parseLog(r io.Reader) ([]fault, error) {
	var out []fault
	passed := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "--- PASS: "); ok {
			passed[strings.Fields(name)[0]] = true
			continue
		}
		i := strings.Index(line, reportTag)
		if i < 0 {
			continue
		}
		var f fault
		if err := json.Unmarshal([]byte(line[i+len(reportTag):]), &f); err != nil {
			return nil, fmt.Errorf("a %sline that is not one: %q: %w", reportTag, line, err)
		}
		if f.Fault == "" || f.Test == "" {
			return nil, fmt.Errorf("a %sline without its fault or test: %q", reportTag, line)
		}
		out = append(out, f)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the log: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("no " + strings.TrimSpace(reportTag) + " line in the log: did the fault suite run (-run '^TestFault' -v)?")
	}
	var failed []string
	for _, f := range out {
		if !passed[f.Test] {
			failed = append(failed, f.Test)
		}
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("fault tests that did not pass: %s", strings.Join(failed, ", "))
	}
	return out, nil
}

// cell escapes a table cell.
func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }

func table(faults []fault, at time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured by `make fault-report` on %s (%d faults, each a test of `test/agent` on the real test bed).\n\n",
		at.UTC().Format("2006-01-02"), len(faults))
	b.WriteString("| Fault | What the agent did | What it reported | What it lost | Test |\n|---|---|---|---|---|\n")
	for _, f := range faults {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | `%s` |\n", cell(f.Fault), cell(f.Did), cell(f.Reported), cell(f.Lost), f.Test)
	}
	return b.String()
}

// replaceTable puts the table between the doc's markers.
func replaceTable(doc []byte, tab string) ([]byte, error) {
	return doctable.Replace(doc, beginMarker, endMarker, tab)
}

func run() error {
	logPath := flag.String("log", "bin/faults.log", "the fault suite's `go test -v` output")
	docPath := flag.String("doc", "docs/reliability.md", "the doc whose table to rewrite")
	flag.Parse()
	lf, err := os.Open(*logPath)
	if err != nil {
		return fmt.Errorf("opening the fault suite's log: %w", err)
	}
	defer lf.Close()
	faults, err := parseLog(lf)
	if err != nil {
		return fmt.Errorf("%s: %w", *logPath, err)
	}
	doc, err := os.ReadFile(*docPath)
	if err != nil {
		return fmt.Errorf("reading the doc: %w", err)
	}
	if doc, err = replaceTable(doc, table(faults, time.Now())); err != nil {
		return fmt.Errorf("%s: %w", *docPath, err)
	}
	if err := os.WriteFile(*docPath, doc, 0o644); err != nil {
		return fmt.Errorf("writing the doc: %w", err)
	}
	fmt.Printf("%s: %d faults\n", *docPath, len(faults))
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fault-report:", err)
		os.Exit(1)
	}
}
