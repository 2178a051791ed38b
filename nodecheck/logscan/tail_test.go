package logscan

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

const evidenceRules = `
rules:
  - name: evidence
    code: IstioCNIErrors
    severity: error
    kind: persistent
    sources: [{type: pod}, {type: journal}, {type: syslog}]
    pattern: 'EVIDENCE id=\d+'
    podPatterns: ['pod=(?P<pod>[a-z0-9-]+/[a-z0-9-]+)']
    message: evidence seen
`

// fixture is a node's log directories under a temporary host root, and a scanner over them
// that can be restarted on the same state directory.
type fixture struct {
	t        *testing.T
	root     string
	stateDir string
	now      time.Time
	rules    *RuleSet
	cfg      func(*Config)
	seen     map[int]int // evidence id -> times matched
	s        *Scanner
}

func newFixture(t *testing.T, rulesYAML string) *fixture {
	t.Helper()
	rs, err := ParseRules([]byte(rulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, root: t.TempDir(), stateDir: t.TempDir(), now: time.Now(), rules: rs, seen: map[int]int{}}
}

func (f *fixture) podLogDir() string { return filepath.Join(f.root, "var/log/pods") }

var idRE = regexp.MustCompile(`EVIDENCE id=(\d+)`)

// restart makes a new scanner on the same state directory: what an agent restart does.
func (f *fixture) restart() {
	f.t.Helper()
	if f.s != nil {
		f.s.Close()
	}
	cfg := Config{
		PodLogDir:   f.podLogDir(),
		JournalDirs: []string{filepath.Join(f.root, "var/log/journal")},
		SyslogFiles: []string{filepath.Join(f.root, "var/log/syslog")},
		Rules:       f.rules,
		Since:       time.Hour,
		StateDir:    f.stateDir,
		Now:         func() time.Time { return f.now },
		ChunkSize:   4096, // small, so lines straddle reads
		MaxLine:     1024,
		OnMatch: func(m Match) {
			if sm := idRE.FindStringSubmatch(m.Sample.Line); sm != nil {
				id, _ := strconv.Atoi(sm[1])
				f.seen[id]++
			}
		},
	}
	if f.cfg != nil {
		f.cfg(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.s = s
	f.t.Cleanup(s.Close)
}

func (f *fixture) scan() ScanStats {
	f.t.Helper()
	if f.s == nil {
		f.restart()
	}
	st, err := f.s.Scan(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	if len(st.Errors) > 0 {
		f.t.Errorf("scan errors: %v", st.Errors)
	}
	return st
}

// exactlyOnce checks every id in [0, n) was matched once.
func (f *fixture) exactlyOnce(n int) {
	f.t.Helper()
	var lost, dup []int
	for id := 0; id < n; id++ {
		switch c := f.seen[id]; {
		case c == 0:
			lost = append(lost, id)
		case c > 1:
			dup = append(dup, id)
		}
	}
	if len(lost) > 0 || len(dup) > 0 || len(f.seen) != n {
		f.t.Fatalf("of %d evidence lines: lost %v, repeated %v, %d distinct seen", n, lost, dup, len(f.seen))
	}
}

// TestKubeletRotationNoLossNoDup follows a container log through kubelet's rotation sequence,
// agent restarts at every step, a restart while a line is half written, an agent down across two
// rotations (the file it was reading gets compressed), old files removed, and a container
// restart: every evidence line is counted once.
func TestKubeletRotationNoLossNoDup(t *testing.T) {
	f := newFixture(t, evidenceRules)
	dir := filepath.Join(f.podLogDir(), "shop_cart-7d9_0b7c2a1e-3f7d-4c55-9d0e-2c6f1f0a9b11", "app")
	log := openContainerLog(t, filepath.Join(dir, "0.log"))
	id := 0
	write := func(l *containerLog, n int) {
		for i := 0; i < n; i++ {
			l.write(f.now, "stdout", fmt.Sprintf("GET /healthz 200 %d %s", i, strings.Repeat("x", i%50)))
			l.write(f.now, "stderr", fmt.Sprintf("error EVIDENCE id=%d pod=shop/cart-7d9", id))
			id++
		}
	}
	step := func() { f.now = f.now.Add(time.Minute) }

	write(log, 50)
	f.scan()
	f.exactlyOnce(id)

	// Rotation; the runtime writes a few more lines to the renamed file before it reopens.
	write(log, 30)
	kubeletRotate(t, log, f.now, 5, func() { write(log, 5) })
	write(log, 20)
	step()
	f.restart()
	f.scan()
	f.exactlyOnce(id)

	// A half-written last line is not read until it is complete, even across a restart.
	write(log, 3)
	half := fmt.Sprintf("%s stderr F error EVIDENCE id=%d pod=shop/cart-7d9", f.now.UTC().Format(time.RFC3339Nano), id)
	log.writeRaw(half[:len(half)-4])
	f.scan()
	f.exactlyOnce(id)
	f.restart()
	log.writeRaw(half[len(half)-4:] + "\n")
	id++
	f.scan()
	f.exactlyOnce(id)

	// A message cut into partial lines is still being written on stdout when a pass ends, while
	// stderr lines after its first part are complete: the pass reads stderr, the next pass (after a
	// restart) reads the stdout message whole from its first part, and stderr is not counted again.
	stamp := f.now.UTC().Format(time.RFC3339Nano)
	log.writeRaw(fmt.Sprintf("%s stdout P first part of EVIDENCE id=%d", stamp, id))
	log.writeRaw(" pod=shop/cart-7d9\n")
	partialID := id
	id++
	stderrOnly := func(n int) {
		for i := 0; i < n; i++ {
			log.write(f.now, "stderr", fmt.Sprintf("error EVIDENCE id=%d pod=shop/cart-7d9", id))
			id++
		}
	}
	stderrOnly(4)
	f.scan()
	if f.seen[partialID] != 0 {
		t.Fatal("a message still being joined was evaluated")
	}
	f.restart()
	stderrOnly(3)
	log.writeRaw(fmt.Sprintf("%s stdout F  and its end\n", stamp))
	write(log, 2)
	f.scan()
	f.exactlyOnce(id)

	// The agent is down across two rotations: the file it was reading gets compressed.
	write(log, 10)
	f.scan()
	write(log, 10)
	kubeletRotate(t, log, f.now, 5, nil)
	write(log, 10)
	step()
	kubeletRotate(t, log, f.now, 5, nil)
	write(log, 10)
	step()
	f.restart()
	f.scan()
	f.exactlyOnce(id)
	if gz, _ := filepath.Glob(filepath.Join(dir, "*.gz")); len(gz) == 0 {
		t.Fatal("the rotation sequence did not compress anything: the test is not testing")
	}

	// More rotations with few files kept: old files are deleted and their state dropped.
	for i := 0; i < 4; i++ {
		write(log, 7)
		step()
		kubeletRotate(t, log, f.now, 3, nil)
		f.scan()
	}
	write(log, 7)
	f.scan()
	f.exactlyOnce(id)

	// The container restarts: kubelet points it at 1.log.
	restarted := openContainerLog(t, filepath.Join(dir, "1.log"))
	write(restarted, 12)
	f.restart()
	f.scan()
	f.exactlyOnce(id)

	st := f.s.state.Streams["pod:"+dir]
	if st == nil || len(st.Files) > 6 {
		t.Fatalf("state should track the current files only, got %+v", st)
	}
	findings := f.s.Findings(f.now)
	if len(findings) != 1 || findings[0].Evidence["count"] != int64(id) {
		t.Fatalf("want one finding counting %d lines, got %+v", id, findings)
	}
}

// TestSyslogRotationNoLossNoDup: logrotate's copytruncate, then its create mode with compression.
func TestSyslogRotationNoLossNoDup(t *testing.T) {
	f := newFixture(t, evidenceRules)
	path := filepath.Join(f.root, "var/log/syslog")
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	id := 0
	write := func(n int) {
		fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		must(t, err)
		defer fh.Close()
		for i := 0; i < n; i++ {
			stamp := f.now.Format(traditionalStamp)
			fmt.Fprintf(fh, "%s node-1 systemd[1]: Started session %d.\n", stamp, i)
			fmt.Fprintf(fh, "%s node-1 kubelet[812]: E0827 error EVIDENCE id=%d\n", stamp, id)
			id++
		}
	}
	write(40)
	f.scan()
	write(10)
	// copytruncate: copy to syslog.1, truncate syslog in place; lines keep coming.
	data, err := os.ReadFile(path)
	must(t, err)
	must(t, os.WriteFile(path+".1", data, 0o640))
	must(t, os.Truncate(path, 0))
	write(15)
	f.restart()
	f.scan()
	f.exactlyOnce(id)

	// create mode: syslog.1 compressed to syslog.2.gz, syslog renamed to syslog.1, a new syslog.
	write(5)
	must(t, os.Rename(path+".1", path+".2"))
	gzipFile(t, path+".2")
	must(t, os.Rename(path, path+".1"))
	write(9)
	f.now = f.now.Add(time.Minute)
	f.restart()
	f.scan()
	f.exactlyOnce(id)
}

// TestBoundedInput: a 10 MiB message (cut into partial lines by the runtime), a 10 MiB syslog line
// without newline until its end, and binary junk: each read with bounded memory, the evidence
// around them found once.
func TestBoundedInput(t *testing.T) {
	f := newFixture(t, evidenceRules)
	f.cfg = func(c *Config) { c.ChunkSize = DefaultChunkSize; c.MaxLine = DefaultMaxLine }
	dir := filepath.Join(f.podLogDir(), "shop_cart-7d9_0b7c2a1e-3f7d-4c55-9d0e-2c6f1f0a9b11", "app")
	log := openContainerLog(t, filepath.Join(dir, "0.log"))
	big := "error EVIDENCE id=0 " + strings.Repeat("y", 10<<20) + " EVIDENCE id=99"
	log.write(f.now, "stderr", big)
	log.write(f.now, "stdout", "after the big one: EVIDENCE id=1")
	junk := make([]byte, 3<<20)
	_, _ = rand.Read(junk)
	log.writeRaw(string(junk) + "\n")
	log.write(f.now, "stdout", "after the junk: EVIDENCE id=2")

	syslog := filepath.Join(f.root, "var/log/syslog")
	stamp := f.now.Format(traditionalStamp)
	must(t, os.WriteFile(syslog, []byte(stamp+" node-1 kubelet[1]: EVIDENCE id=3 "+strings.Repeat("z", 10<<20)+"\n"+
		stamp+" node-1 kubelet[1]: EVIDENCE id=4\n"), 0o640))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	st := f.scan()
	runtime.ReadMemStats(&after)
	f.exactlyOnce(5)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("scanning 23 MiB of oversized input allocated %d MiB; memory must not follow the input", alloc>>20)
	}
	if st.BadLines == 0 {
		t.Error("binary junk was not counted as bad lines")
	}
	var truncated int
	for _, c := range f.s.state.Conditions {
		for _, s := range c.samples() {
			if s.Truncated {
				truncated++
			}
		}
	}
	if truncated == 0 {
		t.Error("the oversized messages' samples should say they were truncated")
	}
}

// TestFirstStartLookback: a first start reads the look-back only, and finds where it starts by
// bisection rather than by reading the whole file.
func TestFirstStartLookback(t *testing.T) {
	f := newFixture(t, evidenceRules)
	dir := filepath.Join(f.podLogDir(), "shop_cart-7d9_0b7c2a1e-3f7d-4c55-9d0e-2c6f1f0a9b11", "app")
	log := openContainerLog(t, filepath.Join(dir, "0.log"))
	start := f.now.Add(-3 * time.Hour)
	inWindow := 0
	for i := 0; i < 3*3600; i++ {
		ts := start.Add(time.Duration(i) * time.Second)
		log.write(ts, "stdout", fmt.Sprintf("tick %d %s", i, strings.Repeat("-", 40)))
		if i%60 == 0 {
			id := -1
			if !ts.Before(f.now.Add(-time.Hour)) {
				id = inWindow
				inWindow++
			}
			log.write(ts, "stderr", fmt.Sprintf("EVIDENCE id=%d", id))
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "0.log"))
	must(t, err)
	st := f.scan()
	delete(f.seen, -1)
	f.exactlyOnce(inWindow)
	if st.Bytes > fi.Size()/2 {
		t.Errorf("read %d of %d bytes for a one-hour look-back over three hours", st.Bytes, fi.Size())
	}
	if !st.FirstStart {
		t.Error("first pass not reported as a first start")
	}
}

// TestInterruptedPassCountsOnce: a pass cancelled halfway saves nothing, so the next pass counts
// each line once in the conditions.
func TestInterruptedPassCountsOnce(t *testing.T) {
	f := newFixture(t, evidenceRules)
	dir := filepath.Join(f.podLogDir(), "shop_cart-7d9_0b7c2a1e-3f7d-4c55-9d0e-2c6f1f0a9b11", "app")
	log := openContainerLog(t, filepath.Join(dir, "0.log"))
	for i := 0; i < 200; i++ {
		log.write(f.now, "stderr", fmt.Sprintf("EVIDENCE id=%d", i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.cfg = func(c *Config) {
		n := 0
		c.OnMatch = func(Match) {
			if n++; n == 50 {
				cancel()
			}
		}
	}
	f.restart()
	if _, err := f.s.Scan(ctx); err == nil {
		t.Fatal("a cancelled pass must say so")
	}
	f.cfg = nil
	f.restart()
	f.scan()
	got := f.s.Findings(f.now)
	if len(got) != 1 || got[0].Evidence["count"] != int64(200) {
		t.Fatalf("want 200 lines counted once, got %+v", got)
	}
}
