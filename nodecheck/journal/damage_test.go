package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/journal/journaltest"
)

func damageEntries() []journaltest.Entry {
	base := time.Date(2026, 8, 27, 12, 0, 0, 0, time.UTC)
	var out []journaltest.Entry
	for i := 0; i < 200; i++ {
		out = append(out, journaltest.Entry{Time: base.Add(time.Duration(i) * time.Second), Unit: "kubelet.service",
			Identifier: "kubelet", Message: fmt.Sprintf("E0827 entry %d %s", i, strings.Repeat("x", i%7*40))})
	}
	return out
}

// TestOpenRejects: what is not a journal file, or not one this reader knows, is an error from
// Open that names the file and the reason.
func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "system.journal")
	journaltest.Write(t, good, damageEntries()[:3], true)
	data, err := os.ReadFile(good)
	must(t, err)
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), data...)) }
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty":          {nil, "reading header"},
		"short header":   {data[:100], "reading header"},
		"bad signature":  {edit(func(b []byte) []byte { copy(b, "NOTAJRNL"); return b }), "bad signature"},
		"unknown layout": {edit(func(b []byte) []byte { b[12] |= 1 << 7; return b }), "unsupported incompatible flags"},
		"bad header size": {edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[88:], uint64(len(b))+1)
			return b
		}), "bad header size"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".journal")
			must(t, os.WriteFile(path, c.data, 0o600))
			j, err := Open(path, Options{})
			if err == nil {
				j.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q: want the path and %q", err, c.want)
			}
		})
	}
	if _, err := Open(filepath.Join(dir, "missing.journal"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want an error wrapping ErrNotExist", err)
	}
}

// TestTruncatedLosesNothing cuts a journal file written by systemd at many places, as a copy
// taken mid-write or a disk filling up would. Reading a cut file gives a prefix of the entries,
// each whole, says why it stopped, and resuming from its cursor on the whole file gives exactly
// the rest: nothing lost, nothing twice.
func TestTruncatedLosesNothing(t *testing.T) {
	for _, layout := range []struct {
		name     string
		compress bool
		env      []string
	}{{"compact-zstd", true, nil}, {"regular-plain", false, []string{"SYSTEMD_JOURNAL_COMPACT=0"}}} {
		t.Run(layout.name, func(t *testing.T) {
			dir := t.TempDir()
			whole := filepath.Join(dir, "system.journal")
			journaltest.Write(t, whole, damageEntries(), layout.compress, layout.env...)
			data, err := os.ReadFile(whole)
			must(t, err)
			j, err := Open(whole, Options{})
			must(t, err)
			defer j.Close()
			all, _ := readAll(t, j, 0, time.Time{})
			if len(all) != 200 {
				t.Fatalf("whole file: %d entries", len(all))
			}
			cutFile := filepath.Join(dir, "cut.journal")
			short, partial, refused := 0, 0, 0
			// Cut across what the file uses, up to the end of its last object (header field
			// tail_object_offset; journald preallocates the rest), at odd offsets so that cuts land
			// inside objects.
			tail := binary.LittleEndian.Uint64(data[136:])
			used := int(tail + binary.LittleEndian.Uint64(data[tail+8:]))
			// The hash tables come first; the cuts that matter are from the first entry's data on.
			first := j.Entries(context.Background(), 0, time.Time{})
			if !first.Next() {
				t.Fatal("no first entry")
			}
			from := int(first.Entry().Offset) - 4096
			cuts := []int{journalHeaderMin + 8, from / 2}
			for cut := from; cut <= used; cut += (used-from)/61 + 1 {
				cuts = append(cuts, cut)
			}
			for _, cut := range cuts {
				must(t, os.WriteFile(cutFile, data[:cut], 0o600))
				c, err := Open(cutFile, Options{})
				if err != nil {
					refused++
					if !strings.Contains(err.Error(), cutFile) {
						t.Errorf("cut at %d: error %q does not name the file", cut, err)
					}
					continue
				}
				got, it := readIter(t, c, 0, time.Time{})
				last := it.Last()
				c.Close()
				for i, e := range got {
					if e.Seqnum != all[i].Seqnum || !bytes.Equal(e.Message, all[i].Message) {
						t.Fatalf("cut at %d: entry %d is %d %q, want %d %q", cut, i, e.Seqnum, e.Message, all[i].Seqnum, all[i].Message)
					}
				}
				if len(got) < len(all) {
					short++
					if len(got) > 0 {
						partial++
					}
					if err := it.Incomplete(); err == nil || !strings.Contains(err.Error(), cutFile) {
						t.Errorf("cut at %d: stopped after %d entries, Incomplete() = %v, want a reason naming the file", cut, len(got), err)
					}
				}
				rest, _ := readAll(t, j, last, time.Time{})
				if len(got)+len(rest) != len(all) || (len(rest) > 0 && rest[0].Seqnum != all[len(got)].Seqnum) {
					t.Errorf("cut at %d: %d entries then %d resuming after seqnum %d, want %d in all", cut, len(got), len(rest), last, len(all))
				}
			}
			t.Logf("%d cuts of the %d bytes the file uses: %d refused by Open, %d read short, %d of them after some entries",
				len(cuts), used, refused, short, partial)
			if partial == 0 {
				t.Fatal("no cut fell among the entries: the test cuts nothing")
			}
		})
	}
}

// TestEntriesCancelled: a cancelled context ends the iteration with an error saying so.
func TestEntriesCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "system.journal")
	journaltest.Write(t, path, damageEntries()[:5], true)
	j, err := Open(path, Options{})
	must(t, err)
	defer j.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	it := j.Entries(ctx, 0, time.Time{})
	if it.Next() {
		t.Fatal("read an entry with a cancelled context")
	}
	if err := it.Err(); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), path) {
		t.Errorf("Err() = %v, want context.Canceled naming the file", err)
	}
	if it.Last() != 0 {
		t.Errorf("cursor moved to %d", it.Last())
	}
}
