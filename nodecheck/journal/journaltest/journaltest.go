// Package journaltest writes journal files with systemd's own writer, for tests.
//
// # Tools
//
// The files are written by systemd-journal-remote from the journal export format, so a test
// reads what journald's writing code produces, in each layout it has. Without the tool a test
// skips, except in CI (CI=true), where test/setup.sh installs it and a missing tool fails.
package journaltest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Entry is one entry to write into a journal file.
type Entry struct {
	Time       time.Time `json:"time"`
	Unit       string    `json:"unit,omitempty"`
	Identifier string    `json:"identifier,omitempty"`
	Comm       string    `json:"comm,omitempty"`
	PID        int       `json:"pid,omitempty"`
	Message    string    `json:"message"`
}

// RequireTool returns the path of the first of candidates found; without any the test skips
// locally and fails in CI.
func RequireTool(t testing.TB, candidates ...string) string {
	t.Helper()
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found; run test/setup.sh", candidates[0])
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: tests on real tools must run)")
	}
	t.Skip(msg)
	return ""
}

// Write writes entries into the journal file out with systemd-journal-remote, from the journal
// export format. It appends when the file exists. env sets systemd's writer options
// (SYSTEMD_JOURNAL_COMPACT=0, ...); compress=false writes uncompressed fields.
func Write(t testing.TB, out string, entries []Entry, compress bool, env ...string) {
	t.Helper()
	tool := RequireTool(t, "/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
	var b bytes.Buffer
	for i, e := range entries {
		fmt.Fprintf(&b, "__REALTIME_TIMESTAMP=%d\n", e.Time.UnixMicro())
		fmt.Fprintf(&b, "__MONOTONIC_TIMESTAMP=%d\n", 1_000_000+e.Time.UnixMicro()%1_000_000_000+int64(i))
		b.WriteString("_BOOT_ID=5e9f3c2a1b0d4c8e9f7a6b5c4d3e2f10\n_MACHINE_ID=3d1219c7c4c5404aaa1f6d2a48adfda4\n_HOSTNAME=node-1\n")
		if e.Unit != "" {
			fmt.Fprintf(&b, "_SYSTEMD_UNIT=%s\n", e.Unit)
		}
		if e.Identifier != "" {
			fmt.Fprintf(&b, "SYSLOG_IDENTIFIER=%s\n", e.Identifier)
		}
		if e.Comm != "" {
			fmt.Fprintf(&b, "_COMM=%s\n", e.Comm)
		}
		if e.PID != 0 {
			fmt.Fprintf(&b, "_PID=%d\n", e.PID)
		}
		if strings.ContainsAny(e.Message, "\n\x00") {
			// The export format's binary form: the name, a newline, a little-endian 64-bit size.
			b.WriteString("MESSAGE\n")
			n := uint64(len(e.Message))
			for i := 0; i < 8; i++ {
				b.WriteByte(byte(n >> (8 * i)))
			}
			b.WriteString(e.Message)
			b.WriteString("\n")
		} else {
			fmt.Fprintf(&b, "MESSAGE=%s\n", e.Message)
		}
		b.WriteString("\n")
	}
	in := filepath.Join(t.TempDir(), "entries.export")
	if err := os.WriteFile(in, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool, "--output="+out, "--compress="+strconv.FormatBool(compress), in)
	cmd.Env = append(os.Environ(), env...)
	if outp, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-journal-remote: %v\n%s", err, outp)
	}
}
