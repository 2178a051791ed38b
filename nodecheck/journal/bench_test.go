package journal

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/journal/journaltest"
)

// benchEntries are what a node's journal mostly holds: short lines from a few services, some
// long compressible ones.
func benchEntries(n int) []journaltest.Entry {
	base := time.Date(2026, 8, 27, 12, 0, 0, 0, time.UTC)
	units := []string{"kubelet.service", "containerd.service", "systemd-networkd.service"}
	out := make([]journaltest.Entry, 0, n)
	for i := 0; i < n; i++ {
		e := journaltest.Entry{Time: base.Add(time.Duration(i) * time.Millisecond), Unit: units[i%3],
			Identifier: strings.TrimSuffix(units[i%3], ".service"), PID: 800 + i%3}
		if i%10 == 9 {
			e.Message = fmt.Sprintf("E0827 %d pod_workers.go:1301] \"Error syncing pod, skipping\" %s", i, strings.Repeat("err=plugin ", 60))
		} else {
			e.Message = fmt.Sprintf("I0827 12:00:00.%06d %d kubelet.go:2442] \"SyncLoop UPDATE\" source=\"api\" pods=[\"shop/cart-%d\"]", i, i, i%97)
		}
		out = append(out, e)
	}
	return out
}

// BenchmarkEntries reads a whole 20 000-entry compact, zstd-compressed file written by systemd,
// as a first scan of a node's journal does.
func BenchmarkEntries(b *testing.B) {
	const n = 20000
	path := filepath.Join(b.TempDir(), "system.journal")
	journaltest.Write(b, path, benchEntries(n), true)
	dec, err := NewDecoder()
	must(b, err)
	defer dec.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j, err := Open(path, Options{Decoder: dec})
		must(b, err)
		got, size := 0, 0
		it := j.Entries(context.Background(), 0, time.Time{})
		for it.Next() {
			got++
			size += len(it.Entry().Message)
		}
		must(b, it.Err())
		j.Close()
		if got != n || size == 0 {
			b.Fatalf("read %d entries (%d bytes of messages), want %d", got, size, n)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}
