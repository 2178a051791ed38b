package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/journal/journaltest"
)

// fuzzMaxData is the message bound the fuzz target reads with: small, so that cutting messages
// is exercised too.
const fuzzMaxData = 200

// fuzzReadLimit bounds reading a fuzzed file twice over: its few KiB take microseconds, so
// reaching it means a loop, even on a loaded machine.
const fuzzReadLimit = 10 * time.Second

// usedBytes is a journal file systemd wrote without the space journald preallocates past its
// last object (header field tail_object_offset, and that object's size).
func usedBytes(tb testing.TB, data []byte) []byte {
	tb.Helper()
	tail := binary.LittleEndian.Uint64(data[136:])
	if tail == 0 || tail+16 > uint64(len(data)) {
		return data
	}
	end := tail + binary.LittleEndian.Uint64(data[tail+8:])
	if end > uint64(len(data)) {
		tb.Fatalf("last object ends at %d, past the file's %d bytes", end, len(data))
	}
	return data[:end]
}

// smallFS returns a directory where systemd writes small journal files: journald sizes a file's
// hash tables from the file system's size (a tenth of it for the journal, an eighth of that per
// file), so on a 8 MiB tmpfs a file of a few entries uses about 40 KiB, not 3.7 MiB, and is an
// input a fuzzer can mutate. Without root (no mount) it is dir itself.
func smallFS(tb testing.TB, dir string) string {
	tb.Helper()
	small := filepath.Join(dir, "small")
	if err := os.Mkdir(small, 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("tmpfs", small, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=8m,mode=0700"); err != nil {
		tb.Logf("no tmpfs for small seeds (%v): seeding with full-size journal files", err)
		return dir
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(small, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmounting %s: %v", small, err)
		}
	})
	return small
}

// fuzzEntry is what the fuzz target compares of an entry.
type fuzzEntry struct {
	seqnum  uint64
	message string
	unit    string
}

// readFuzz reads every entry of the journal file at path, checking what must hold whatever the
// file holds: Open's errors and the iteration's name the file, no entry is read twice more than
// the file has room for, messages stay within the bound.
func readFuzz(t *testing.T, path string, size int, d *Decoder) []fuzzEntry {
	t.Helper()
	j, err := Open(path, Options{MaxData: fuzzMaxData, Decoder: d})
	if err != nil {
		if !strings.Contains(err.Error(), path) {
			t.Fatalf("Open error %q does not name the file", err)
		}
		return nil
	}
	defer j.Close()
	var out []fuzzEntry
	it := j.Entries(context.Background(), 0, time.Time{})
	for it.Next() {
		e := it.Entry()
		// Every entry is an item of an entry array (4 bytes at least) in the file.
		if len(out) > size/4 {
			t.Fatalf("%d entries from a %d-byte file", len(out), size)
		}
		if e.Seqnum == 0 || e.Offset >= uint64(size) || e.Offset%8 != 0 {
			t.Fatalf("entry %d at %d of a %d-byte file", e.Seqnum, e.Offset, size)
		}
		if len(e.Message) > fuzzMaxData || (e.Truncated && len(e.Message) != fuzzMaxData) {
			t.Fatalf("message of %d bytes (truncated %v), bound %d", len(e.Message), e.Truncated, fuzzMaxData)
		}
		if len(e.Unit) > 256 || len(e.Identifier) > 256 || len(e.Comm) > 256 || len(e.PID) > 256 {
			t.Fatalf("a field over 256 bytes: %d %d %d %d", len(e.Unit), len(e.Identifier), len(e.Comm), len(e.PID))
		}
		out = append(out, fuzzEntry{e.Seqnum, string(e.Message), e.Unit})
	}
	for _, err := range []error{it.Err(), it.Incomplete()} {
		if err != nil && !strings.Contains(err.Error(), path) {
			t.Fatalf("iteration error %q does not name the file", err)
		}
	}
	if st := j.Stats(); st.Entries != int64(len(out)) {
		t.Fatalf("stats count %d entries, %d read", st.Entries, len(out))
	}
	return out
}

// FuzzFile: whatever bytes a journal file holds, opening and reading it never panics nor loops,
// gives an error naming the file or entries within the file's bounds, and the file cut anywhere
// reads as a prefix of what the whole file reads (a copy taken mid-write loses nothing it holds).
// Seeded with journal files systemd-journal-remote writes, in each layout (compact with zstd,
// regular without compression), and with a binary message.
func FuzzFile(f *testing.F) {
	base := time.Date(2026, 8, 27, 12, 0, 0, 0, time.UTC)
	entries := []journaltest.Entry{
		{Time: base, Unit: "kubelet.service", Identifier: "kubelet", PID: 812,
			Message: `E0827 12:00:00.000000     812 pod_workers.go:1301] "Error syncing pod" err="failed to \"StartContainer\" for \"istio-init\""`},
		{Time: base.Add(time.Second), Unit: "containerd.service", Identifier: "containerd", Comm: "containerd",
			Message: strings.Repeat("level=error msg=\"failed to setup network for sandbox\" ", 6)},
		{Time: base.Add(2 * time.Second), Identifier: "istio-cni", Message: "multi\nline\x00binary"},
	}
	dir := f.TempDir()
	seeds := smallFS(f, dir)
	for i, layout := range []struct {
		compress bool
		env      []string
	}{{true, nil}, {false, []string{"SYSTEMD_JOURNAL_COMPACT=0"}}, {true, []string{"SYSTEMD_JOURNAL_COMPACT=0"}}} {
		path := filepath.Join(seeds, fmt.Sprintf("seed-%d.journal", i))
		journaltest.Write(f, path, entries, layout.compress, layout.env...)
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		data = usedBytes(f, data)
		f.Add(data, uint32(len(data)))
		f.Add(data, uint32(len(data)*2/3))
	}
	path := filepath.Join(dir, "fuzz.journal")
	cutPath := filepath.Join(dir, "cut.journal")
	// One decoder for every read, as a scan of many files has.
	d, err := NewDecoder()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(d.Close)
	f.Fuzz(func(t *testing.T, data []byte, cut uint32) {
		// A read that does not end is a crash too, with where it loops: the fuzzer keeps the input.
		watchdog := time.AfterFunc(fuzzReadLimit, func() {
			stacks := make([]byte, 1<<20)
			panic(fmt.Sprintf("reading a %d-byte journal file took over %v:\n%s", len(data), fuzzReadLimit, stacks[:runtime.Stack(stacks, true)]))
		})
		defer watchdog.Stop()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		whole := readFuzz(t, path, len(data), d)
		c := int(cut % uint32(len(data)+1))
		if err := os.WriteFile(cutPath, data[:c], 0o600); err != nil {
			t.Fatal(err)
		}
		part := readFuzz(t, cutPath, c, d)
		if len(part) > len(whole) {
			t.Fatalf("cut at %d: %d entries, the whole file %d", c, len(part), len(whole))
		}
		for i := range part {
			if part[i] != whole[i] {
				t.Fatalf("cut at %d: entry %d is %+v, in the whole file %+v", c, i, part[i], whole[i])
			}
		}
	})
}

// The seeds are what systemd wrote: reading them gives every entry.
func TestFuzzSeedsAreWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "system.journal")
	journaltest.Write(t, path, damageEntries()[:3], true)
	data, err := os.ReadFile(path)
	must(t, err)
	used := usedBytes(t, data)
	must(t, os.WriteFile(path, used, 0o600))
	got := readFuzz(t, path, len(used), nil)
	if len(got) != 3 || !bytes.HasPrefix([]byte(got[2].message), []byte("E0827 entry 2")) {
		t.Fatalf("the used bytes of a 3-entry file read %+v", got)
	}
}
