// Command fuzz-report turns the output of `make fuzz` into the table of docs/reliability.md: per
// fuzz target its package, its seeds, the executions of the run and the crashes it found.
//
// It reads the log `make fuzz` writes (FUZZLOG): a line `fuzz PACKAGE TARGET` before each
// target's `go test -fuzz` output, whose last `execs: N` line is the target's total and whose
// `Failing input written to` line is a crash. The seeds are counted by running each target's
// seed corpus (f.Add and testdata/fuzz) as a plain test. The table goes between the markers
// `<!-- fuzz-table:begin -->` and `<!-- fuzz-table:end -->` of the doc.
//
// Usage (what `make fuzz-report` runs):
//
//	go run ./test/cmd/fuzz-report -log bin/fuzz.log -fuzztime 20s -flags '-parallel 1' -doc docs/reliability.md
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/test/cmd/internal/doctable"
)

const (
	beginMarker = "<!-- fuzz-table:begin -->"
	endMarker   = "<!-- fuzz-table:end -->"
)

// target is one fuzz target's run, as the log says.
type target struct {
	pkg, name   string
	seeds       int
	execs       int64
	interesting int
	crashes     int
	failed      bool
	// retried: the first run failed with no failing input (go.dev/issue/75804); this is the second.
	retried bool
}

var (
	execsLine = regexp.MustCompile(`^fuzz: elapsed: \S+, execs: (\d+) .*new interesting: (\d+)`)
	crashLine = regexp.MustCompile(`Failing input written to`)
)

// parseLog reads the targets of a `make fuzz` log, in the order they ran.
func parseLog(r io.Reader) ([]*target, error) {
	var out []*target
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 3 && f[0] == "fuzz" && strings.Contains(f[1], "/") && strings.HasPrefix(f[2], "Fuzz") {
			out = append(out, &target{pkg: f[1], name: f[2]})
			continue
		}
		if len(out) == 0 {
			continue
		}
		t := out[len(out)-1]
		if m := execsLine.FindStringSubmatch(line); m != nil {
			t.execs, _ = strconv.ParseInt(m[1], 10, 64)
			t.interesting, _ = strconv.Atoi(m[2])
		}
		if crashLine.MatchString(line) {
			t.crashes++
		}
		if strings.HasPrefix(line, "fuzz failed: ") {
			t.failed = true
		}
		if strings.HasPrefix(line, "fuzz retried: ") {
			t.retried = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the fuzz log: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("the fuzz log names no fuzz target: is it make fuzz's FUZZLOG?")
	}
	return out, nil
}

// countSeeds runs t's seed corpus as a test and counts its inputs.
func countSeeds(t *target) error {
	out, err := exec.Command("go", "test", "-count=1", "-run", "^"+t.name+"$", "-v", t.pkg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("running the seeds of %s in %s: %w\n%s", t.name, t.pkg, err, out)
	}
	prefix := []byte("--- PASS: " + t.name + "/")
	for line := range bytes.Lines(out) {
		if bytes.HasPrefix(bytes.TrimSpace(line), prefix) {
			t.seeds++
		}
	}
	return nil
}

func table(targets []*target, fuzztime, flags string, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "FUZZTIME=%s per target, `%s`, %s, on %d vCPU (%s/%s, %s), targets run one after another.\n\n",
		fuzztime, flags, now.UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	b.WriteString("| target | package | seeds | executions | new inputs | crashes |\n|---|---|---:|---:|---:|---:|\n")
	var execs int64
	crashes, seeds := 0, 0
	for _, t := range targets {
		c := strconv.Itoa(t.crashes)
		if t.failed && t.crashes == 0 {
			c = "failed"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %s |\n", t.name, strings.TrimPrefix(t.pkg, "github.com/meshdoctor/meshdoctor/"),
			t.seeds, t.execs, t.interesting, c)
		execs += t.execs
		crashes += t.crashes
		seeds += t.seeds
	}
	fmt.Fprintf(&b, "| **%d targets** | | %d | %d | | %d |\n", len(targets), seeds, execs, crashes)
	for _, t := range targets {
		if t.retried {
			fmt.Fprintf(&b, "\n%s's first run ended in Go's `context deadline exceeded` with no failing input (the fuzz "+
				"coordinator's deadline race under CPU starvation, go.dev/issue/75804, fixed in Go 1.27): the row is its second run.\n", t.name)
		}
	}
	return b.String()
}

// replaceTable puts the table between the doc's markers.
func replaceTable(doc []byte, tab string) ([]byte, error) {
	return doctable.Replace(doc, beginMarker, endMarker, tab)
}

func run() error {
	logPath := flag.String("log", "bin/fuzz.log", "make fuzz's output (FUZZLOG)")
	docPath := flag.String("doc", "docs/reliability.md", "the doc whose table to rewrite")
	fuzztime := flag.String("fuzztime", "", "the FUZZTIME the run used")
	flags := flag.String("flags", "", "the FUZZFLAGS the run used")
	flag.Parse()
	lf, err := os.Open(*logPath)
	if err != nil {
		return fmt.Errorf("opening the fuzz log: %w", err)
	}
	defer lf.Close()
	targets, err := parseLog(lf)
	if err != nil {
		return err
	}
	for _, t := range targets {
		if err := countSeeds(t); err != nil {
			return err
		}
	}
	doc, err := os.ReadFile(*docPath)
	if err != nil {
		return fmt.Errorf("reading the doc: %w", err)
	}
	doc, err = replaceTable(doc, table(targets, *fuzztime, *flags, time.Now()))
	if err != nil {
		return fmt.Errorf("%s: %w", *docPath, err)
	}
	if err := os.WriteFile(*docPath, doc, 0o644); err != nil {
		return fmt.Errorf("writing the doc: %w", err)
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fuzz-report:", err)
		os.Exit(1)
	}
}
