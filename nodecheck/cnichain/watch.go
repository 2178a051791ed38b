package cnichain

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Watcher records a CNI config directory's changes into a timeline as they happen, over inotify
// (read-only: a watch takes no lock and writes nothing). Changes that come together (an
// installer writing a temporary file and renaming it) are debounced into one entry, dated by the
// first of them: a pod networked right after a rewrite falls after it.
type Watcher struct {
	Dir      string
	Inspect  Inspector
	Timeline *Timeline
	// Debounce gathers the events of one rewrite (DefaultDebounce when zero).
	Debounce time.Duration
	// RetryEvery is how often a missing directory is looked for (DefaultRetry when zero).
	RetryEvery time.Duration
	// OnChange, when set, sees every entry recorded after the first (the agent re-checks the
	// node and its pods on it).
	OnChange func(Change)
	Log      *slog.Logger

	lastChain Chain
}

// Defaults of a Watcher.
const (
	DefaultDebounce = 300 * time.Millisecond
	DefaultRetry    = 2 * time.Second
)

const watchMask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// Run watches until ctx ends. It returns an error only when inotify itself is unusable; a missing
// or removed directory is recorded and waited for.
func (w *Watcher) Run(ctx context.Context) error {
	if w.Debounce <= 0 {
		w.Debounce = DefaultDebounce
	}
	if w.RetryEvery <= 0 {
		w.RetryEvery = DefaultRetry
	}
	if w.Log == nil {
		w.Log = slog.New(slog.DiscardHandler)
	}
	first, missingSince := true, time.Time{}
	for ctx.Err() == nil {
		in, err := openWatch(w.Dir)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			if missingSince.IsZero() {
				missingSince = time.Now()
				w.record(Change{At: missingSince, Event: EventDirRemoved, Chain: Unknown, Source: SourceInotify,
					Error: fmt.Sprintf("%s does not exist: the runtime networks no pod until it does", w.Dir)}, first)
				w.Log.Warn("CNI config directory missing; waiting for it", "dir", w.Dir)
				first = false
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(w.RetryEvery):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("watching CNI config directory %s: %w", w.Dir, err)
		}
		ev := EventWatchStarted
		if !missingSince.IsZero() {
			ev, missingSince = EventDirCreated, time.Time{}
		}
		w.record(w.inspectChange(time.Now(), ev, nil), first)
		first = false
		gone := w.follow(ctx, in)
		in.Close()
		if gone.IsZero() {
			return nil
		}
		missingSince = gone
		w.record(Change{At: gone, Event: EventDirRemoved, Chain: Unknown, Source: SourceInotify,
			Error: fmt.Sprintf("%s was removed: the runtime networks no pod until it is back", w.Dir)}, false)
		w.Log.Warn("CNI config directory removed; waiting for it to come back", "dir", w.Dir)
	}
	return nil
}

// follow records the directory's changes until ctx ends (zero returned) or the directory goes
// (the time it went).
func (w *Watcher) follow(ctx context.Context, in *os.File) time.Time {
	events, done := make(chan inotifyBatch), make(chan struct{})
	defer close(done)
	go readEvents(in, events, done)
	var pending []string
	var since time.Time
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		if since.IsZero() {
			return
		}
		slices.Sort(pending)
		w.record(w.inspectChange(since, EventWritten, slices.Compact(pending)), false)
		pending, since = nil, time.Time{}
	}
	for {
		select {
		case <-ctx.Done():
			return time.Time{}
		case <-timer.C:
			flush()
		case b, ok := <-events:
			if !ok || b.dirGone {
				// Changes pending when the directory went (its files removed with it) are
				// part of the removal: no entry of their own, no read of a directory gone.
				if !ok && ctx.Err() != nil {
					return time.Time{}
				}
				if !ok {
					return time.Now()
				}
				return b.at
			}
			if since.IsZero() {
				since = b.at
				timer.Reset(w.Debounce)
			}
			pending = append(pending, b.names...)
		}
	}
}

func (w *Watcher) inspectChange(at time.Time, ev Event, files []string) Change {
	c := Change{At: at, Event: ev, Files: files, Source: SourceInotify, Chain: Unknown}
	snap, err := w.Inspect(w.Dir)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	c.Primary, c.Chain = snap.Primary, snap.Chain
	return c
}

func (w *Watcher) record(c Change, first bool) {
	w.Timeline.Record(c)
	// A reconciler rewriting the same config every few seconds is logged at debug level; a change
	// of what the chain holds at info.
	level := slog.LevelDebug
	if first || c.Chain != w.lastChain {
		level = slog.LevelInfo
	}
	w.lastChain = c.Chain
	w.Log.Log(context.Background(), level, "CNI config directory", "event", c.Event, "files", c.Files, "primary", c.Primary, "chain", c.Chain, "err", c.Error)
	if !first && w.OnChange != nil {
		w.OnChange(c)
	}
}

// openWatch returns an inotify instance watching dir, as a file the runtime's poller serves (so
// that closing it ends a blocked read).
func openWatch(dir string) (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, watchMask); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%s: %w", dir, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("inotify_add_watch %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), "inotify:"+dir), nil
}

// inotifyBatch is what one read returned: the names touched, or that the directory went.
type inotifyBatch struct {
	at      time.Time
	names   []string
	dirGone bool
}

// readEvents decodes inotify events until the file is closed, the watch ends or done is closed,
// then closes out.
func readEvents(in *os.File, out chan<- inotifyBatch, done <-chan struct{}) {
	defer close(out)
	buf := make([]byte, 64<<10)
	for {
		n, err := in.Read(buf)
		if err != nil {
			return
		}
		b := inotifyBatch{at: time.Now()}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameEnd := off + unix.SizeofInotifyEvent + int(ev.Len)
			if nameEnd > n {
				break // a short read never splits an event; stop rather than read past it
			}
			name := string(buf[off+unix.SizeofInotifyEvent : nameEnd])
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			switch {
			case ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
				b.dirGone = true
			case ev.Mask&unix.IN_Q_OVERFLOW != 0:
				b.names = append(b.names, "(events lost: inotify queue overflowed)")
			case name != "":
				b.names = append(b.names, name)
			}
			off = nameEnd
		}
		select {
		case out <- b:
		case <-done:
			return
		}
		if b.dirGone {
			return
		}
	}
}
