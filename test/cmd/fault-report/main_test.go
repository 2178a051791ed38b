package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/table.md")

// The fault suite's real output (`go test -run '^TestFault' -v ./test/agent/`), turned into the
// table kept beside it.
func TestTableFromARealRun(t *testing.T) {
	f, err := os.Open("testdata/faults.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	faults, err := parseLog(f)
	if err != nil {
		t.Fatal(err)
	}
	got := table(faults, time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC))
	golden := filepath.Join("testdata", "table.md")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./test/cmd/fault-report -update)", err)
	}
	if got != string(want) {
		t.Errorf("table differs from %s:\n%s", golden, got)
	}
	doc := []byte("# Reliability\n\n<!-- fault-table:begin -->\nold\n<!-- fault-table:end -->\n\nafter\n")
	out, err := replaceTable(doc, got)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), got) || strings.Contains(string(out), "old") || !strings.HasSuffix(string(out), "after\n") {
		t.Errorf("replaced doc:\n%s", out)
	}
}

func TestBadLogs(t *testing.T) {
	for _, tc := range []struct {
		name, log, wantErr string
	}{
		{"no records", "=== RUN   TestFaultX\n--- PASS: TestFaultX (1.00s)\nok\n", "no FAULT-REPORT line"},
		{"a failed test's record", "    faults_test.go:1: FAULT-REPORT {\"fault\":\"f\",\"test\":\"TestFaultX\"}\n--- FAIL: TestFaultX (1.00s)\n",
			"did not pass: TestFaultX"},
		{"junk after the tag", "    faults_test.go:1: FAULT-REPORT {\"fault\":\n", "not one"},
		{"no test name", "    faults_test.go:1: FAULT-REPORT {\"fault\":\"f\"}\n--- PASS: TestFaultX (1.00s)\n", "without its fault or test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseLog(strings.NewReader(tc.log))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
	if _, err := replaceTable([]byte("no markers"), "x"); err == nil {
		t.Error("a doc without markers is no error")
	}
}
