package cnichain_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiocni"
)

// Real configs from the istio-cni check's captures: containerd's default bridge chain as
// istio-cni's installer leaves it, the same without istio-cni, and Cilium's own.
var (
	chainedConf   = readFixture("../istiocni/testdata/complete/root/etc/cni/net.d/10-containerd-net.conflist")
	unchainedConf = readFixture("../istiocni/testdata/not-installed/root/etc/cni/net.d/10-containerd-net.conflist")
	ciliumConf    = readFixture("../istiocni/testdata/chained-in-unused-file/root/etc/cni/net.d/05-cilium.conflist")
)

func readFixture(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return data
}

var t0 = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func at(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }

func TestGapAt(t *testing.T) {
	history := []cnichain.Change{
		{At: at(0), Event: cnichain.EventWatchStarted, Primary: "10-containerd-net.conflist", Chain: cnichain.Chained, Source: "inotify"},
		{At: at(10), Event: cnichain.EventWritten, Files: []string{"05-cilium.conflist"}, Primary: "05-cilium.conflist", Chain: cnichain.Unchained, Source: "inotify"},
		{At: at(12), Event: cnichain.EventWritten, Files: []string{"05-cilium.conflist", "x"}, Primary: "05-cilium.conflist", Chain: cnichain.Unchained, Source: "inotify"},
		{At: at(15), Event: cnichain.EventWritten, Files: []string{"05-cilium.conflist"}, Primary: "05-cilium.conflist", Chain: cnichain.Chained, Source: "inotify"},
		{At: at(20), Event: cnichain.EventDirRemoved, Chain: cnichain.Unknown, Source: "inotify"},
		{At: at(25), Event: cnichain.EventDirCreated, Primary: "05-cilium.conflist", Chain: cnichain.Unchained, Source: "inotify"},
	}
	tl := cnichain.NewTimeline(0)
	for _, c := range history {
		tl.Record(c)
	}
	for _, tc := range []struct {
		name string
		at   time.Time
		want *nodecheck.CNIChainGap
	}{
		{"before the history: cannot tell", at(-1), nil},
		{"chained", at(5), nil},
		{"at the rewrite", at(10), &nodecheck.CNIChainGap{From: at(10), Until: at(15), Primary: "05-cilium.conflist", Source: "inotify"}},
		{"after a second unchained write: the window began at the first", at(13), &nodecheck.CNIChainGap{From: at(10), Until: at(15), Primary: "05-cilium.conflist", Source: "inotify"}},
		{"re-chained", at(15), nil},
		{"no directory: no pod networked, nothing to blame", at(22), nil},
		{"back without istio-cni, still open", at(30), &nodecheck.CNIChainGap{From: at(25), Primary: "05-cilium.conflist", Source: "inotify"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tl.GapAt(tc.at)
			if (tc.want == nil) != !ok || tc.want != nil && !sameGap(got, *tc.want) {
				t.Errorf("GapAt(%s) = %+v, %v; want %+v", tc.at.Format(time.Kitchen), got, ok, tc.want)
			}
		})
	}
}

func sameGap(a, b nodecheck.CNIChainGap) bool {
	return a.From.Equal(b.From) && a.Until.Equal(b.Until) && a.Primary == b.Primary && a.Source == b.Source
}

func TestTimelineIsBoundedAndFoldsRepeats(t *testing.T) {
	tl := cnichain.NewTimeline(3)
	rewrite := cnichain.Change{Event: cnichain.EventWritten, Files: []string{"05-cilium.conflist"}, Primary: "05-cilium.conflist", Chain: cnichain.Unchained, Source: "inotify"}
	for i := range 100 {
		c := rewrite
		c.At = at(i)
		tl.Record(c) // a reconciler rewriting its config every minute
	}
	got := tl.Changes()
	if len(got) != 1 || got[0].Repeats != 99 || !got[0].At.Equal(at(0)) || !got[0].LastAt.Equal(at(99)) {
		t.Fatalf("100 identical rewrites: %+v; want one entry from %s, 99 repeats, last at %s", got, at(0), at(99))
	}
	for i := range 5 {
		tl.Record(cnichain.Change{At: at(200 + i), Event: cnichain.EventWritten, Files: []string{fmt.Sprint(i)}, Chain: cnichain.Chained})
	}
	got = tl.Changes()
	if len(got) != 3 || got[0].Files[0] != "2" || tl.Dropped() != 3 {
		t.Fatalf("bounded to 3: %+v, dropped %d; want files 2,3,4 kept and 3 dropped", got, tl.Dropped())
	}
	many := make([]string, 20)
	for i := range many {
		many[i] = fmt.Sprint("f", i)
	}
	tl.Record(cnichain.Change{At: at(300), Files: many})
	if files := tl.Changes()[2].Files; len(files) != 9 || files[8] != "… 12 more" {
		t.Errorf("20 files in one change kept as %q", files)
	}
}

// writeConf writes a config file as installers do (a temporary file renamed over it), with the
// given modification time when not zero.
func writeConf(t *testing.T, dir, name string, data []byte, mtime time.Time) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if !mtime.IsZero() {
		if err := os.Chtimes(tmp, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func setDirTime(t *testing.T, dir string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(dir, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// What `check` rebuilds from the files alone: the chain now, and a window only where the files
// prove one.
func TestFromMtimes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		times map[string]time.Time
		dir   time.Time
		// gaps: the window GapAt gives at each moment (nil: none).
		gaps map[time.Time]*nodecheck.CNIChainGap
		last cnichain.Chain
	}{
		{
			name:  "chained now: the past is unknown, no window",
			files: map[string][]byte{"10-containerd-net.conflist": chainedConf},
			times: map[string]time.Time{"10-containerd-net.conflist": at(10)},
			dir:   at(5),
			gaps:  map[time.Time]*nodecheck.CNIChainGap{at(0): nil, at(7): nil, at(20): nil},
			last:  cnichain.Chained,
		},
		{
			name:  "another CNI's config sorts first: unchained since it was written",
			files: map[string][]byte{"05-cilium.conflist": ciliumConf, "10-containerd-net.conflist": chainedConf},
			times: map[string]time.Time{"10-containerd-net.conflist": at(1), "05-cilium.conflist": at(10)},
			dir:   at(10),
			gaps: map[time.Time]*nodecheck.CNIChainGap{at(5): nil,
				at(10): {From: at(10), Primary: "05-cilium.conflist", Source: "mtime"},
				at(60): {From: at(10), Primary: "05-cilium.conflist", Source: "mtime"}},
			last: cnichain.Unchained,
		},
		{
			name:  "an old unchained primary whose chained predecessor was removed later: from the removal",
			files: map[string][]byte{"10-containerd-net.conflist": unchainedConf},
			times: map[string]time.Time{"10-containerd-net.conflist": at(1)},
			dir:   at(30),
			gaps: map[time.Time]*nodecheck.CNIChainGap{at(20): nil,
				at(30): {From: at(30), Primary: "10-containerd-net.conflist", Source: "mtime"}},
			last: cnichain.Unchained,
		},
		{
			name:  "no config at all",
			files: map[string][]byte{},
			dir:   at(3),
			gaps:  map[time.Time]*nodecheck.CNIChainGap{at(5): nil},
			last:  cnichain.Unknown,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tc.files {
				writeConf(t, dir, name, data, tc.times[name])
			}
			setDirTime(t, dir, tc.dir)
			tl, err := cnichain.FromMtimes(dir, istiocni.ChainInUse, 0)
			if err != nil {
				t.Fatal(err)
			}
			changes := tl.Changes()
			if got := changes[len(changes)-1].Chain; got != tc.last {
				t.Errorf("newest entry's chain %s, want %s: %+v", got, tc.last, changes)
			}
			for when, want := range tc.gaps {
				got, ok := tl.GapAt(when)
				if want != nil {
					want.Primary = filepath.Join(dir, want.Primary)
				}
				if (want == nil) != !ok || want != nil && !sameGap(got, *want) {
					t.Errorf("GapAt(+%s) = %+v, %v; want %+v\ntimeline %+v", when.Sub(t0), got, ok, want, changes)
				}
			}
		})
	}
	if _, err := cnichain.FromMtimes(filepath.Join(t.TempDir(), "gone"), istiocni.ChainInUse, 0); err == nil {
		t.Error("a missing directory gave no error")
	}
}

// syncLog collects the changes a watcher reports.
type syncLog struct {
	mu      sync.Mutex
	changes []cnichain.Change
}

func (l *syncLog) add(c cnichain.Change) {
	l.mu.Lock()
	l.changes = append(l.changes, c)
	l.mu.Unlock()
}
func (l *syncLog) len() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.changes) }

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The agent's watch on a real directory over inotify: another CNI writes its config in front of
// istio-cni's chain, removes it, the directory goes and comes back. Every step is one entry, with
// the chain then, and GapAt dates a pod networked in the window.
func TestWatcherRecordsTheChainAsItChanges(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeConf(t, dir, "10-containerd-net.conflist", chainedConf, time.Time{})
	tl := cnichain.NewTimeline(0)
	seen := &syncLog{}
	w := &cnichain.Watcher{Dir: dir, Inspect: istiocni.ChainInUse, Timeline: tl, Debounce: 50 * time.Millisecond,
		RetryEvery: 20 * time.Millisecond, OnChange: seen.add}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, "the watch to start", func() bool { return len(tl.Changes()) == 1 })

	steps := []struct {
		do    func()
		event cnichain.Event
		chain cnichain.Chain
		files []string
	}{
		{func() { writeConf(t, dir, "05-cilium.conflist", ciliumConf, time.Time{}) }, cnichain.EventWritten, cnichain.Unchained,
			[]string{".05-cilium.conflist.tmp", "05-cilium.conflist"}},
		{func() {
			if err := os.Remove(filepath.Join(dir, "05-cilium.conflist")); err != nil {
				t.Fatal(err)
			}
		}, cnichain.EventWritten, cnichain.Chained, []string{"05-cilium.conflist"}},
		{func() {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}, cnichain.EventDirRemoved, cnichain.Unknown, nil},
		{func() {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			writeConf(t, dir, "10-containerd-net.conflist", unchainedConf, time.Time{})
		}, cnichain.EventDirCreated, cnichain.Unchained, nil},
	}
	var marks []time.Time
	for i, s := range steps {
		before := time.Now()
		marks = append(marks, before)
		s.do()
		waitFor(t, fmt.Sprintf("step %d (%s)", i+1, s.event), func() bool { return seen.len() > i && len(tl.Changes()) > i+1 })
		got := tl.Changes()[i+1]
		files := slices.DeleteFunc(slices.Clone(got.Files), func(f string) bool {
			return f == "10-containerd-net.conflist" && s.event == cnichain.EventWritten && i == 1
		})
		if got.Event != s.event || got.Chain != s.chain || (s.files != nil && !slices.Equal(files, s.files)) || got.At.Before(before) {
			t.Errorf("step %d: %+v; want event %q, chain %s, files %q, at or after %s", i+1, got, s.event, s.chain, s.files, before)
		}
	}
	// Removing the directory and making it again may be seen in one step or two: wait until the
	// new directory's chain is recorded, then no more changes come.
	time.Sleep(100 * time.Millisecond)
	changes := tl.Changes()
	if n := len(changes); n != 5 {
		t.Errorf("%d entries, want 5 (start, rewrite, removal of the rewrite, directory removed, created): %+v", n, changes)
	}

	// A pod networked between Cilium's write and its removal fell in a window; one before did not.
	if gap, ok := tl.GapAt(marks[0].Add(-time.Millisecond)); ok {
		t.Errorf("before the rewrite: gap %+v", gap)
	}
	gap, ok := tl.GapAt(marks[1].Add(-time.Millisecond))
	if !ok || gap.Source != "inotify" || filepath.Base(gap.Primary) != "05-cilium.conflist" || !gap.From.Equal(changes[1].At) || !gap.Until.Equal(changes[2].At) {
		t.Errorf("in the window: %+v, %v; want from %s until %s in 05-cilium.conflist", gap, ok, changes[1].At, changes[2].At)
	}
	if gap, ok := tl.GapAt(time.Now()); !ok || !gap.Until.IsZero() || !gap.From.Equal(changes[4].At) {
		t.Errorf("now (the re-created directory's config has no istio-cni): %+v, %v", gap, ok)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// A watch started on a directory that does not exist yet records that and follows it once made.
func TestWatcherWaitsForTheDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	tl := cnichain.NewTimeline(0)
	w := &cnichain.Watcher{Dir: dir, Inspect: istiocni.ChainInUse, Timeline: tl, Debounce: 20 * time.Millisecond, RetryEvery: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	waitFor(t, "the missing directory recorded", func() bool { return len(tl.Changes()) == 1 })
	if c := tl.Changes()[0]; c.Event != cnichain.EventDirRemoved || c.Chain != cnichain.Unknown || c.Error == "" {
		t.Errorf("first entry %+v", c)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the directory's creation", func() bool { return len(tl.Changes()) == 2 })
	writeConf(t, dir, "10-containerd-net.conflist", chainedConf, time.Time{})
	waitFor(t, "the config written", func() bool { return len(tl.Changes()) == 3 })
	if c := tl.Changes()[2]; c.Chain != cnichain.Chained {
		t.Errorf("after the write: %+v", c)
	}
}
