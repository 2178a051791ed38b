package procfile_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/procfile"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := bytes.Repeat([]byte("filter\n"), 5000) // 35 000 bytes: many reads, one answer
	for _, c := range []struct {
		name    string
		path    string
		want    []byte
		wantErr string
	}{
		{"empty", write("empty", nil), []byte{}, ""},
		{"one line", write("names", []byte("nat\nfilter\n")), []byte("nat\nfilter\n"), ""},
		{"larger than one buffer", write("big", big), big, ""},
		{"exactly the largest", write("full", bytes.Repeat([]byte("x"), 64<<10)), bytes.Repeat([]byte("x"), 64<<10), ""},
		{"too large", write("huge", bytes.Repeat([]byte("x"), 64<<10+1)), nil, "larger than 65536 bytes"},
		{"a directory", dir, nil, "is a directory"},
		// A file of /proc whose size is 0 until read.
		{"proc", "/proc/self/comm", nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := procfile.Read(c.path)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.want == nil {
				want, err := os.ReadFile(c.path)
				if err != nil {
					t.Fatal(err)
				}
				c.want = want
			}
			if !bytes.Equal(got, c.want) {
				t.Fatalf("read %d bytes %q..., want %d bytes", len(got), got[:min(len(got), 20)], len(c.want))
			}
		})
	}
	if _, err := procfile.Read(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: err = %v, want os.ErrNotExist", err)
	}
}
