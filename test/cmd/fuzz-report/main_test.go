package main

import (
	"strings"
	"testing"
	"time"
)

// A log as make fuzz writes it: go test's own lines under each target's header, one target
// passing, one crashing.
const sampleLog = `fuzz github.com/meshdoctor/meshdoctor/nodecheck/intent FuzzParseInitArgs
fuzz retried: FuzzParseInitArgs
fuzz: elapsed: 0s, gathering baseline coverage: 0/21 completed
fuzz: elapsed: 0s, gathering baseline coverage: 21/21 completed, now fuzzing with 1 workers
fuzz: elapsed: 3s, execs: 59153 (19714/sec), new interesting: 40 (total: 61)
fuzz: elapsed: 20s, execs: 329898 (28747/sec), new interesting: 96 (total: 117)
PASS
ok  	github.com/meshdoctor/meshdoctor/nodecheck/intent	20.033s
fuzz github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf FuzzProcFiles
fuzz: elapsed: 0s, execs: 142 (2111/sec), new interesting: 0 (total: 8)
--- FAIL: FuzzProcFiles (1.54s)
    Failing input written to testdata/fuzz/FuzzProcFiles/4db5c09b24c2a72e
FAIL
fuzz failed: FuzzProcFiles
`

func TestParseLogAndTable(t *testing.T) {
	targets, err := parseLog(strings.NewReader(sampleLog))
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 2 {
		t.Fatalf("%d targets", len(targets))
	}
	a, b := targets[0], targets[1]
	if a.name != "FuzzParseInitArgs" || a.execs != 329898 || a.interesting != 96 || a.crashes != 0 || a.failed || !a.retried {
		t.Errorf("first target %+v", a)
	}
	if b.crashes != 1 || !b.failed || b.execs != 142 {
		t.Errorf("second target %+v", b)
	}
	a.seeds, b.seeds = 21, 3
	tab := table(targets, "20s", "-parallel 1", time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC))
	for _, want := range []string{"| FuzzParseInitArgs | nodecheck/intent | 21 | 329898 | 96 | 0 |",
		"| **2 targets** | | 24 | 330040 | | 1 |", "FUZZTIME=20s", "2026-12-07", "FuzzParseInitArgs's first run"} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
	doc, err := replaceTable([]byte("# R\n\n"+beginMarker+"\nold\n"+endMarker+"\nafter\n"), tab)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(doc), "old") || !strings.HasSuffix(string(doc), endMarker+"\nafter\n") {
		t.Errorf("doc:\n%s", doc)
	}
	if _, err := replaceTable([]byte("no markers"), tab); err == nil {
		t.Error("a doc without markers is no error")
	}
	if _, err := parseLog(strings.NewReader("PASS\n")); err == nil {
		t.Error("a log of no target is no error")
	}
}
