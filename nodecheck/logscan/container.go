package logscan

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// ContainerLog names one run of a container in kubelet's pod log directory:
// <Dir>/<namespace>_<pod>_<uid>/<container>/<attempt>.log, with its rotated copies.
type ContainerLog struct {
	Dir                 string
	Namespace, Pod, UID string
	Container           string
	// Attempt is the container's restart count: the N of N.log.
	Attempt uint32
}

// Path is the log file being written for this run of the container.
func (l ContainerLog) Path() string {
	return filepath.Join(l.Dir, l.Namespace+"_"+l.Pod+"_"+l.UID, l.Container, strconv.FormatUint(uint64(l.Attempt), 10)+".log")
}

// Window bounds a search in one container log.
type Window struct {
	// Since and Until bound the messages' times; zero is unbounded.
	Since, Until time.Time
	// Last asks for the latest matches (reading the end of the log) instead of the first ones.
	Last bool
	// Limit is how many matches to return (default 1).
	Limit int
	// MaxBytes bounds what is read (default 1 MiB): a search costs the same whatever the log's size.
	MaxBytes int64
}

// Defaults of a Window.
const (
	DefaultSearchBytes = 1 << 20
	searchChunk        = 2 * DefaultMaxLine
	searchMaxLine      = DefaultMaxLine
)

// LogQuery is a pattern to look for in single container logs: a pod check citing what one of its
// containers logged (a refused connection in an app's first seconds, the proxy's last readiness
// failure). It reads the files kubelet writes, with the engine's CRI parsing (partial lines
// joined) and literal pre-filter, but none of the Scanner's state: each search reads afresh.
// It is safe for concurrent use.
type LogQuery struct {
	rule *compiledRule
	m    *matcher
	// readers keeps read buffers between searches: a search needs one, concurrent searches one
	// each, and checks search every pod.
	readers sync.Pool
}

// NewLogQuery compiles an RE2 pattern matched against each log message.
func NewLogQuery(pattern string) (*LogQuery, error) {
	r, err := compileRule(Rule{
		Name: "query", Code: "Query", Severity: nodecheck.SeverityInfo, Kind: Persistent,
		Sources: []Selector{{Type: SourcePod}}, Pattern: pattern, Message: "query",
	})
	if err != nil {
		return nil, fmt.Errorf("log query %q: %w", pattern, err)
	}
	q := &LogQuery{rule: r, m: newMatcher([]*compiledRule{r})}
	q.readers.New = func() any { return newChunkReader(searchChunk, searchMaxLine) }
	return q, nil
}

// Search returns the messages of the container's run that match, oldest first, as samples
// (file, offset, time, bounded line). A log that does not exist is an error wrapping
// fs.ErrNotExist. Files are read oldest first from the run's start (or, with w.Last, only the end
// of the newest one), within w.MaxBytes.
func (q *LogQuery) Search(ctx context.Context, l ContainerLog, w Window) ([]Sample, error) {
	if w.Limit <= 0 {
		w.Limit = 1
	}
	if w.MaxBytes <= 0 {
		w.MaxBytes = DefaultSearchBytes
	}
	dir := filepath.Dir(l.Path())
	all, err := containerLogFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("container log of %s/%s %s: %w", l.Namespace, l.Pod, l.Container, err)
	}
	var files []*logFile
	for _, f := range all {
		if f.order[0] == int64(l.Attempt) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("container log %s: %w", l.Path(), fs.ErrNotExist)
	}
	origin := l.Namespace + "/" + l.Pod + "/" + l.Container
	var found []Sample
	if w.Last {
		lf := files[len(files)-1]
		return q.searchFile(ctx, lf, origin, w, max(0, lf.size-w.MaxBytes), w.MaxBytes, -w.Limit)
	}
	budget := w.MaxBytes
	for _, lf := range files {
		if budget <= 0 || len(found) >= w.Limit {
			break
		}
		if !w.Since.IsZero() && !lf.gz && lf.mtime.Before(w.Since) {
			continue // written to for the last time before the window opened
		}
		more, err := q.searchFile(ctx, lf, origin, w, 0, budget, w.Limit-len(found))
		found = append(found, more...)
		if err != nil {
			return found, err
		}
		budget -= min(lf.size, budget)
	}
	return found, nil
}

// errEnough stops a read once the matches asked for are found.
var errEnough = errors.New("enough matches")

// searchFile reads up to budget bytes of one file from offset start (moved to the next line start
// when it falls inside a line) and returns its matches: the first limit ones when limit > 0 (the
// read stops there), the last -limit ones when limit < 0.
func (q *LogQuery) searchFile(ctx context.Context, lf *logFile, origin string, w Window, start, budget int64, limit int) ([]Sample, error) {
	f, err := os.Open(lf.path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", lf.path, err)
	}
	defer f.Close()
	var r io.Reader
	switch {
	case lf.gz:
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("reading gzip %s: %w", lf.path, err)
		}
		defer zr.Close()
		r, start = io.LimitReader(zr, budget), 0
	default:
		if start > 0 {
			start, err = nextLineStart(f, start, lf.size)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", lf.path, err)
			}
		} else if !w.Since.IsZero() {
			start = seekTime(f, lf.size, w.Since, func(line []byte) (time.Time, bool) {
				l, err := ParseCRILine(line)
				return l.Time, err == nil
			})
		}
		r = io.NewSectionReader(f, start, min(lf.size-start, budget))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var found []Sample
	fsc := &fileScan{path: lf.path, origin: origin, rules: []*compiledRule{q.rule}, m: q.m, cutoff: w.Since}
	fsc.emit = func(_ *compiledRule, msg []byte, off int64, t time.Time, truncated bool, from string) {
		if (!w.Until.IsZero() && t.After(w.Until)) || (limit > 0 && len(found) >= limit) {
			return
		}
		line, cut := boundLine(msg)
		found = append(found, Sample{Source: lf.path, Offset: off, Time: t.UTC(), Origin: from, Line: line, Truncated: truncated || cut})
		switch {
		case limit > 0 && len(found) >= limit:
			cancel(errEnough)
		case limit < 0 && len(found) > -limit:
			found = found[1:]
		}
	}
	h := &criHandler{fs: fsc, maxLine: searchMaxLine}
	reader := q.readers.Get().(*chunkReader)
	defer q.readers.Put(reader)
	// The file being written may end in half a line: leave it, as a tailing pass would.
	final := lf.gz || lf.rotated
	if _, err := reader.read(ctx, r, start, final, h); err != nil && !errors.Is(context.Cause(ctx), errEnough) {
		return found, fmt.Errorf("reading %s: %w", lf.path, err)
	}
	h.flush()
	return found, nil
}

// nextLineStart returns the offset just past the first newline at or after off (size when none).
func nextLineStart(f io.ReaderAt, off, size int64) (int64, error) {
	buf := make([]byte, 4096)
	for off < size {
		n, err := f.ReadAt(buf, off)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			return off + int64(i) + 1, nil
		}
		off += int64(n)
		if err != nil && !errors.Is(err, io.EOF) {
			return off, err
		}
		if n == 0 {
			break
		}
	}
	return size, nil
}
