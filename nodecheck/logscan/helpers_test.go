package logscan

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/journal/journaltest"
)

// inCI reports whether a skipped real-tool test would hide a regression.
func inCI() bool { return os.Getenv("CI") == "true" }

// requireTool returns the path of a tool the test needs; without it the test skips locally and
// fails in CI (test/setup.sh installs it).
func requireTool(t testing.TB, candidates ...string) string {
	t.Helper()
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found; run test/setup.sh", candidates[0])
	if inCI() {
		t.Fatal(msg + " (CI=true: tests on real tools must run)")
	}
	t.Skip(msg)
	return ""
}

// criMaxLine is containerd's default max_container_log_line_size: longer messages are cut into
// P lines.
const criMaxLine = 16 * 1024

// containerLog writes a container log file the way containerd's CRI logger does for kubelet:
// "<RFC3339Nano time> <stream> <P|F> <content>\n", a message longer than the line limit cut into
// partial (P) lines and a last full (F) one.
type containerLog struct {
	t    testing.TB
	path string
	f    *os.File
}

func openContainerLog(t testing.TB, path string) *containerLog {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &containerLog{t: t, path: path, f: f}
}

func (c *containerLog) write(ts time.Time, stream, msg string) {
	c.t.Helper()
	var b bytes.Buffer
	stamp := ts.UTC().Format(time.RFC3339Nano)
	for len(msg) > criMaxLine {
		fmt.Fprintf(&b, "%s %s P %s\n", stamp, stream, msg[:criMaxLine])
		msg = msg[criMaxLine:]
	}
	fmt.Fprintf(&b, "%s %s F %s\n", stamp, stream, msg)
	if _, err := c.f.Write(b.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

// writeRaw writes bytes as they are (a half-written line, junk).
func (c *containerLog) writeRaw(s string) {
	c.t.Helper()
	if _, err := c.f.WriteString(s); err != nil {
		c.t.Fatal(err)
	}
}

// reopen is the runtime's ReopenContainerLog: close the file (now renamed) and create a new one
// at the original path.
func (c *containerLog) reopen() {
	c.t.Helper()
	c.f.Close()
	f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		c.t.Fatal(err)
	}
	c.f = f
}

// kubeletRotate does what kubelet's container log manager does when a container log outgrows
// containerLogMaxSize: drop temporary files and uncompressed copies of compressed ones, remove
// the oldest rotated files beyond containerLogMaxFiles-2, gzip every uncompressed rotated file,
// then rename the live log to <log>.<YYYYMMDD-hhmmss> and have the runtime reopen it.
// beforeReopen runs between the rename and the reopen (the runtime still writes to the old file).
func kubeletRotate(t testing.TB, c *containerLog, now time.Time, maxFiles int, beforeReopen func()) {
	t.Helper()
	rotated, err := filepath.Glob(c.path + ".*")
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range rotated {
		switch {
		case strings.HasSuffix(l, ".tmp"), !strings.HasSuffix(l, ".gz") && slices.Contains(rotated, l+".gz"):
			must(t, os.Remove(l))
		default:
			keep = append(keep, l)
		}
	}
	slices.Sort(keep)
	for len(keep) > max(maxFiles-2, 0) {
		must(t, os.Remove(keep[0]))
		keep = keep[1:]
	}
	for _, l := range keep {
		if strings.HasSuffix(l, ".gz") {
			continue
		}
		gzipFile(t, l)
	}
	must(t, os.Rename(c.path, c.path+"."+now.Format("20060102-150405")))
	if beforeReopen != nil {
		beforeReopen()
	}
	c.reopen()
}

// gzipFile compresses like kubelet: to <log>.tmp, renamed to <log>.gz, the original removed.
func gzipFile(t testing.TB, path string) {
	t.Helper()
	in, err := os.Open(path)
	must(t, err)
	defer in.Close()
	out, err := os.Create(path + ".tmp")
	must(t, err)
	w := gzip.NewWriter(out)
	_, err = io.Copy(w, in)
	must(t, err)
	must(t, w.Close())
	must(t, out.Close())
	must(t, os.Rename(path+".tmp", path+".gz"))
	must(t, os.Remove(path))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// journalIn is one entry to write into a journal file.
type journalIn = journaltest.Entry

// writeJournal writes entries into a journal file with systemd's own writer (journaltest.Write).
func writeJournal(t testing.TB, out string, entries []journalIn, compress bool, env ...string) {
	t.Helper()
	journaltest.Write(t, out, entries, compress, env...)
}
