package logscan

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fpSize is how many leading bytes fingerprint a file.
const fpSize = 256

// finalAge is how long a rotated file must have been left alone before it is taken as final (its
// last line without a newline read as a line, the file not read again). Right after kubelet
// renames a log, the runtime may still write to it until it reopens the new one.
const finalAge = 10 * time.Second

// logFile is one file of a stream, as found on disk in this pass.
type logFile struct {
	path    string
	dev     uint64
	ino     uint64
	size    int64
	mtime   time.Time
	gz      bool
	rotated bool   // not the name being written to
	prefix  []byte // the first fpSize bytes (decompressed for .gz)
	order   [3]int64
}

func statLogFile(path string, gz, rotated bool) (*logFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	lf := &logFile{path: path, size: fi.Size(), mtime: fi.ModTime(), gz: gz, rotated: rotated}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		lf.dev, lf.ino = uint64(st.Dev), st.Ino
	}
	return lf, nil
}

// readPrefix reads the file's first bytes for its fingerprint.
func (lf *logFile) readPrefix() error {
	f, err := os.Open(lf.path)
	if err != nil {
		return fmt.Errorf("opening: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if lf.gz {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("reading gzip header: %w", err)
		}
		defer zr.Close()
		r = zr
	}
	buf := make([]byte, fpSize)
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading first bytes: %w", err)
	}
	lf.prefix = buf[:n]
	return nil
}

func fingerprint(b []byte) string {
	h := fnv.New128a()
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// matches reports whether the file starts with the bytes the state fingerprinted.
func (lf *logFile) matches(st *fileState) bool {
	return len(lf.prefix) >= st.FPLen && fingerprint(lf.prefix[:st.FPLen]) == st.FP
}

// identify pairs the files found now with the files of the stream's state: first by inode with
// the same first bytes (a file renamed by rotation keeps its inode), then by first bytes alone (a
// copy made by copytruncate, a rotated file compressed). A file that pairs with nothing is new;
// a state entry that pairs with nothing was deleted.
func identify(found []*logFile, prev *streamState) []*fileState {
	out := make([]*fileState, len(found))
	if prev == nil {
		return out
	}
	used := make([]bool, len(prev.Files))
	for i, lf := range found {
		if lf.gz {
			continue
		}
		for j, st := range prev.Files {
			// A file whose first bytes could not be read keeps its state by inode alone, so a
			// passing read error does not make it new (and read again from the start).
			if !used[j] && st.Dev == lf.dev && st.Ino == lf.ino && (lf.prefix == nil || lf.matches(st)) {
				out[i], used[j] = st, true
				break
			}
		}
	}
	for i, lf := range found {
		if out[i] != nil || lf.prefix == nil {
			continue
		}
		for j, st := range prev.Files {
			if !used[j] && st.FPLen > 0 && lf.matches(st) {
				out[i], used[j] = st, true
				break
			}
		}
	}
	return out
}

// podLogDir is one pod's directory under /var/log/pods: <namespace>_<name>_<uid>.
type podLogDir struct {
	path, namespace, name, uid string
}

func parsePodLogDir(dir, base string) (podLogDir, bool) {
	parts := strings.Split(base, "_")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return podLogDir{}, false
	}
	return podLogDir{path: filepath.Join(dir, base), namespace: parts[0], name: parts[1], uid: parts[2]}, true
}

// containerLogFiles lists a container log directory the way kubelet lays it out: N.log (N is the
// container's restart count) being written, N.log.<YYYYMMDD-hhmmss> rotated, and older rotated
// logs compressed to N.log.<stamp>.gz. Oldest first.
func containerLogFiles(dir string) ([]*logFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	var out []*logFile
	for _, e := range ents {
		name := e.Name()
		dot := strings.Index(name, ".log")
		if dot <= 0 {
			continue
		}
		restart, err := strconv.ParseInt(name[:dot], 10, 64)
		if err != nil {
			continue
		}
		rest := name[dot+len(".log"):]
		gz := strings.HasSuffix(rest, ".gz")
		rest = strings.TrimSuffix(rest, ".gz")
		var stamp int64
		rotated := rest != ""
		if rotated {
			t, err := time.Parse("20060102-150405", strings.TrimPrefix(rest, "."))
			if err != nil || !strings.HasPrefix(rest, ".") {
				continue // kubelet's temporary files and anything else
			}
			stamp = t.Unix()
		} else if gz {
			continue
		}
		lf, err := statLogFile(filepath.Join(dir, name), gz, rotated)
		if err != nil {
			continue // gone between listing and stat: rotation at work
		}
		current := int64(0)
		if !rotated {
			current = 1
		}
		lf.order = [3]int64{restart, current, stamp}
		out = append(out, lf)
	}
	slices.SortFunc(out, func(a, b *logFile) int {
		for i := range a.order {
			if a.order[i] != b.order[i] {
				if a.order[i] < b.order[i] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
	return out, nil
}

// syslogFiles lists a syslog file with its rotated copies (logrotate's syslog.1, syslog.2.gz, and
// the dateext style messages-20260827[.gz]), oldest first.
func syslogFiles(base string) ([]*logFile, error) {
	dir, name := filepath.Split(base)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	var out []*logFile
	for _, e := range ents {
		n := e.Name()
		var rotated bool
		switch {
		case n == name:
		case strings.HasPrefix(n, name+"."), strings.HasPrefix(n, name+"-"):
			suffix := strings.TrimSuffix(n[len(name)+1:], ".gz")
			if suffix == "" || strings.Trim(suffix, "0123456789") != "" {
				continue
			}
			rotated = true
		default:
			continue
		}
		lf, err := statLogFile(filepath.Join(dir, n), strings.HasSuffix(n, ".gz"), rotated)
		if err != nil {
			continue
		}
		out = append(out, lf)
	}
	slices.SortFunc(out, func(a, b *logFile) int {
		if a.rotated != b.rotated {
			if a.rotated {
				return -1
			}
			return 1
		}
		return a.mtime.Compare(b.mtime)
	})
	return out, nil
}

// seekTime finds, by bisection over a file whose lines are in time order, an offset of a line
// start at or before the first line stamped at or after cutoff. It bounds a first start's
// look-back without reading whole histories; the lines between that offset and the cutoff are
// filtered one by one.
func seekTime(f io.ReaderAt, size int64, cutoff time.Time, stamp func([]byte) (time.Time, bool)) int64 {
	const window = 4096
	lo, hi := int64(0), size
	buf := make([]byte, window)
	for hi-lo > 2*window {
		mid := lo + (hi-lo)/2
		n, _ := f.ReadAt(buf, mid)
		b := buf[:n]
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			hi = mid // a huge line: give up narrowing from above
			continue
		}
		start := mid + int64(nl) + 1
		var t time.Time
		ok := false
		// Look at a few lines in case one is not stamped (binary junk, a cut line).
		for rest := b[nl+1:]; len(rest) > 0 && !ok; {
			e := bytes.IndexByte(rest, '\n')
			if e < 0 {
				break
			}
			t, ok = stamp(rest[:e])
			rest = rest[e+1:]
		}
		switch {
		case !ok:
			hi = mid
		case t.Before(cutoff):
			lo = start
		default:
			hi = mid
		}
	}
	return lo
}
