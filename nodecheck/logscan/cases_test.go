package logscan

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the expected findings of testdata/cases")

// scanCase is a node's logs as a test case describes them (testdata/cases/<name>/case.yaml);
// the findings the default rules make of them are in expected.json beside it.
type scanCase struct {
	Now     time.Time   `json:"now"`
	Since   string      `json:"since"`
	Pods    []casePod   `json:"pods"`
	Journal []journalIn `json:"journal"`
	Syslog  []string    `json:"syslog"`
}

type casePod struct {
	Namespace string     `json:"namespace"`
	Pod       string     `json:"pod"`
	UID       string     `json:"uid"`
	Container string     `json:"container"`
	Lines     []caseLine `json:"lines"`
	// Relay is a file of the istio-cni plugin's JSON log lines, written to this container's log as
	// istio-cni-node relays them.
	Relay string `json:"relay"`
}

type caseLine struct {
	Time    time.Time `json:"time"`
	Stream  string    `json:"stream"`
	Message string    `json:"message"`
}

// istioConsoleTime is Istio's console log timestamp (pkg/log formatDate): microseconds, UTC.
const istioConsoleTime = "2006-01-02T15:04:05.000000Z"

// relayPluginLog turns the plugin's JSON log lines into istio-cni-node's console lines: scope
// cni-plugin, extra keys as labels after a tab.
func relayPluginLog(t *testing.T, file string) []caseLine {
	t.Helper()
	data, err := os.ReadFile(file)
	must(t, err)
	var out []caseLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var raw map[string]any
		must(t, json.Unmarshal(sc.Bytes(), &raw))
		ts, err := time.Parse(time.RFC3339Nano, raw["time"].(string))
		must(t, err)
		msg := fmt.Sprintf("%s\t%s\tcni-plugin\t%s", ts.UTC().Format(istioConsoleTime), raw["level"], raw["msg"])
		var labels []string
		for k, v := range raw {
			if k != "time" && k != "level" && k != "msg" {
				labels = append(labels, fmt.Sprintf("%s=%v", k, v))
			}
		}
		slices.Sort(labels)
		if len(labels) > 0 {
			msg += "\t" + strings.Join(labels, " ")
		}
		out = append(out, caseLine{Time: ts, Stream: "stdout", Message: msg})
	}
	return out
}

// materialise writes the case's logs under root as the node would have them.
func (c *scanCase) materialise(t *testing.T, dir, root string) {
	t.Helper()
	for _, p := range c.Pods {
		lines := p.Lines
		if p.Relay != "" {
			lines = append(lines, relayPluginLog(t, filepath.Join(dir, p.Relay))...)
		}
		path := filepath.Join(root, "var/log/pods", p.Namespace+"_"+p.Pod+"_"+p.UID, p.Container, "0.log")
		log := openContainerLog(t, path)
		for _, l := range lines {
			stream := l.Stream
			if stream == "" {
				stream = "stderr"
			}
			log.write(l.Time, stream, l.Message)
		}
	}
	if len(c.Journal) > 0 {
		writeJournal(t, filepath.Join(root, "var/log/journal/3d1219c7c4c5404aaa1f6d2a48adfda4/system.journal"), c.Journal, true)
	}
	if len(c.Syslog) > 0 {
		path := filepath.Join(root, "var/log/syslog")
		must(t, os.MkdirAll(filepath.Dir(path), 0o755))
		must(t, os.WriteFile(path, []byte(strings.Join(c.Syslog, "\n")+"\n"), 0o640))
	}
}

// normalise makes findings comparable across runs: the temporary root becomes $ROOT, and a
// journal sample's offset (where systemd's writer put the entry object) becomes "journal".
func normalise(t *testing.T, v any, root string) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	must(t, err)
	data = bytes.ReplaceAll(data, []byte(root), []byte("$ROOT"))
	var generic any
	must(t, json.Unmarshal(data, &generic))
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			if s, ok := x["source"].(string); ok && strings.HasSuffix(s, ".journal") {
				x["offset"] = "journal"
			}
			for _, v := range x {
				walk(v)
			}
		case []any:
			for _, v := range x {
				walk(v)
			}
		}
	}
	walk(generic)
	out, err := json.MarshalIndent(generic, "", "  ")
	must(t, err)
	return append(out, '\n')
}

// TestCases runs the default rules over each case's logs and compares the findings with the
// expected JSON beside the case (go test -run TestCases -update rewrites them).
func TestCases(t *testing.T) {
	dirs, err := filepath.Glob("testdata/cases/*")
	must(t, err)
	if len(dirs) == 0 {
		t.Fatal("no cases")
	}
	rules, err := DefaultRules()
	must(t, err)
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, "case.yaml"))
			must(t, err)
			var c scanCase
			if err := yaml.UnmarshalStrict(data, &c); err != nil {
				t.Fatalf("case.yaml: %v", err)
			}
			since, err := time.ParseDuration(c.Since)
			must(t, err)
			root := t.TempDir()
			c.materialise(t, dir, root)
			s, err := New(Config{
				PodLogDir:   filepath.Join(root, "var/log/pods"),
				JournalDirs: []string{filepath.Join(root, "var/log/journal"), filepath.Join(root, "run/log/journal")},
				SyslogFiles: []string{filepath.Join(root, "var/log/syslog"), filepath.Join(root, "var/log/messages")},
				Rules:       rules,
				Since:       since,
				Now:         func() time.Time { return c.Now },
			})
			must(t, err)
			defer s.Close()
			res, err := (&Check{Scanner: s}).CheckNode(context.Background())
			must(t, err)
			if st := res.Detail.(ScanStats); len(st.Errors) > 0 {
				t.Fatalf("scan errors: %v", st.Errors)
			}
			got := normalise(t, res.Findings, root)
			wantFile := filepath.Join(dir, "expected.json")
			if *update {
				must(t, os.WriteFile(wantFile, got, 0o644))
				return
			}
			want, err := os.ReadFile(wantFile)
			must(t, err)
			if !bytes.Equal(got, want) {
				t.Errorf("findings differ from %s (rerun with -update to accept):\n%s", wantFile, got)
			}
		})
	}
}
