package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestProfilesAreWritten: both profiles of a run are written as pprof files (gzip-compressed
// protocol buffers), and a profile that cannot be written is a clear failure before any work.
func TestProfilesAreWritten(t *testing.T) {
	dir := t.TempDir()
	cpu, heap := filepath.Join(dir, "cpu.pprof"), filepath.Join(dir, "heap.pprof")
	if code := run(t.Context(), "meshdoctor", []string{"version", "--cpu-profile", cpu, "--heap-profile", heap}); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, p := range []string{cpu, heap} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Errorf("%s: not a pprof file (%d bytes, starts % x)", p, len(b), b[:min(len(b), 4)])
		}
	}
	if code := run(t.Context(), "meshdoctor", []string{"version", "--cpu-profile", filepath.Join(dir, "missing", "cpu.pprof")}); code != exitCannot {
		t.Errorf("unwritable --cpu-profile: exit %d, want %d", code, exitCannot)
	}
}
