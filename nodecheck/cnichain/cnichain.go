// Package cnichain keeps the history of the node's CNI chain: which file of the CNI config
// directory changed when, and whether the config the runtime uses after each change chains
// istio-cni. The agent records it as it happens (Watch, over inotify); `meshdoctor check`, run
// once, rebuilds what the files' modification times still tell (FromMtimes). A pod networked in a
// window without istio-cni was never captured (PodCreatedBeforeIstioCNI).
package cnichain

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Chain is what the config the runtime uses says of istio-cni.
type Chain string

// Chain values. Unknown covers an unreadable config and multus (istio-cni is then attached per
// pod, not chained) as well as the past that modification times cannot tell.
const (
	Chained   Chain = "chained"
	Unchained Chain = "unchained"
	Unknown   Chain = "unknown"
)

// Snapshot is the chain in use at one moment.
type Snapshot struct {
	// Primary is the config file the runtime uses (the first in name order), "" when none.
	Primary string
	Chain   Chain
}

// Inspector reads the chain in use from a CNI config directory (istiocni.ChainInUse).
type Inspector func(dir string) (Snapshot, error)

// Event says what happened to the directory.
type Event string

// Events.
const (
	// EventWritten: files were created, written, renamed or removed.
	EventWritten Event = "files changed"
	// EventDirRemoved: the directory itself went away (no config: the runtime networks no pod).
	EventDirRemoved Event = "directory removed"
	// EventDirCreated: the directory came back.
	EventDirCreated Event = "directory created"
	// EventWatchStarted: the agent started watching; the chain in use then.
	EventWatchStarted Event = "watch started"
	// EventLastWritten: rebuilt from a file's modification time (FromMtimes).
	EventLastWritten Event = "last written"
	// EventEntriesChanged: rebuilt from the directory's modification time (FromMtimes): a file
	// was created, renamed or removed then.
	EventEntriesChanged Event = "entries last changed"
)

// Sources of a change.
const (
	SourceInotify = "inotify"
	SourceMtime   = "mtime"
)

// Change is one entry of the timeline.
type Change struct {
	At    time.Time `json:"at"`
	Event Event     `json:"event"`
	// Files are the names (in the directory) the change touched, at most maxFilesPerChange.
	Files   []string `json:"files,omitempty"`
	Primary string   `json:"primary,omitempty"`
	Chain   Chain    `json:"chain"`
	Source  string   `json:"source"`
	// Repeats counts the later changes that left the same files and the same chain (a CNI's
	// reconciler rewriting its config every few seconds), last seen at LastAt.
	Repeats int       `json:"repeats,omitempty"`
	LastAt  time.Time `json:"lastAt,omitzero"`
	// Error is why the chain could not be read after the change.
	Error string `json:"error,omitempty"`
}

// DefaultMaxChanges bounds a timeline: the oldest entries go first.
const DefaultMaxChanges = 64

const maxFilesPerChange = 8

// Timeline is a bounded, concurrency-safe history of the chain, oldest first.
type Timeline struct {
	mu      sync.Mutex
	max     int
	changes []Change
	dropped int
}

// NewTimeline returns an empty timeline keeping at most max changes (DefaultMaxChanges when
// max <= 0).
func NewTimeline(max int) *Timeline {
	if max <= 0 {
		max = DefaultMaxChanges
	}
	return &Timeline{max: max}
}

// Record adds a change. One that repeats the last entry (same event, files, primary and chain)
// only counts on it, so a reconciler's rewrites do not push the history out.
func (t *Timeline) Record(c Change) {
	if len(c.Files) > maxFilesPerChange {
		c.Files = append(c.Files[:maxFilesPerChange:maxFilesPerChange], fmt.Sprintf("… %d more", len(c.Files)-maxFilesPerChange))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.changes); n > 0 {
		last := &t.changes[n-1]
		if last.Event == c.Event && last.Primary == c.Primary && last.Chain == c.Chain && last.Error == c.Error &&
			slices.Equal(last.Files, c.Files) && last.Source == c.Source {
			last.Repeats++
			last.LastAt = c.At
			return
		}
	}
	t.changes = append(t.changes, c)
	if over := len(t.changes) - t.max; over > 0 {
		t.changes = slices.Delete(t.changes, 0, over)
		t.dropped += over
	}
}

// Changes returns a copy of the timeline, oldest first.
func (t *Timeline) Changes() []Change {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.changes)
}

// Dropped is how many old changes the bound pushed out.
func (t *Timeline) Dropped() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dropped
}

// GapAt returns the window without istio-cni that holds the moment at, when the timeline knows
// one: the last change at or before at left the chain unchained. A moment before the first
// change, or after a change whose chain is unknown, is no gap: the timeline cannot tell, and a
// pod is never blamed on a guess.
func (t *Timeline) GapAt(at time.Time) (nodecheck.CNIChainGap, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := -1
	for j, c := range t.changes {
		if c.At.After(at) {
			break
		}
		i = j
	}
	if i < 0 || t.changes[i].Chain != Unchained {
		return nodecheck.CNIChainGap{}, false
	}
	// The gap began at the first of the unchained changes leading up to i.
	from := i
	for from > 0 && t.changes[from-1].Chain == Unchained {
		from--
	}
	gap := nodecheck.CNIChainGap{From: t.changes[from].At, Primary: t.changes[i].Primary, Source: t.changes[i].Source}
	for _, c := range t.changes[i+1:] {
		if c.Chain != Unchained {
			gap.Until = c.At
			break
		}
	}
	return gap, true
}

// FromMtimes rebuilds what a directory's files still tell: one change per config file at its
// modification time, and one at the directory's own (a file created, renamed or removed), oldest
// first, with the chain in use now on the newest. The older entries' chain is unknown: the files
// say when they were last written, not what they held before. When the chain in use is unchained
// now, it has been since the later of its primary file's last write and the directory's last
// change (a chained file that sorted first may have been removed then): those entries are
// marked unchained, so GapAt tells the window, never more than it.
func FromMtimes(dir string, inspect Inspector, max int) (*Timeline, error) {
	t := NewTimeline(max)
	dirInfo, err := os.Stat(dir)
	if err != nil {
		return t, fmt.Errorf("reading CNI config directory %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return t, fmt.Errorf("reading CNI config directory %s: %w", dir, err)
	}
	changes := []Change{{At: dirInfo.ModTime(), Event: EventEntriesChanged, Chain: Unknown, Source: SourceMtime}}
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
		default:
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while listing
		}
		if err != nil {
			return t, fmt.Errorf("reading %s: %w", filepath.Join(dir, e.Name()), err)
		}
		if !info.IsDir() {
			changes = append(changes, Change{At: info.ModTime(), Event: EventLastWritten, Files: []string{e.Name()}, Chain: Unknown, Source: SourceMtime})
		}
	}
	slices.SortStableFunc(changes, func(a, b Change) int { return a.At.Compare(b.At) })
	snap, inspectErr := inspect(dir)
	newest := &changes[len(changes)-1]
	newest.Primary, newest.Chain = snap.Primary, snap.Chain
	if inspectErr != nil {
		newest.Chain, newest.Error = Unknown, inspectErr.Error()
	}
	if newest.Chain == Unchained {
		since := dirInfo.ModTime()
		for _, c := range changes {
			if slices.Contains(c.Files, filepath.Base(snap.Primary)) && c.At.After(since) {
				since = c.At
			}
		}
		for i := range changes {
			if !changes[i].At.Before(since) {
				changes[i].Chain, changes[i].Primary = Unchained, snap.Primary
			}
		}
	}
	for _, c := range changes {
		t.Record(c)
	}
	return t, nil
}
