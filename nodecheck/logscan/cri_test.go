package logscan

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// realLines are the lines of the output captured from the real programs (testdata/real).
func realLines(tb testing.TB) []string {
	tb.Helper()
	paths, err := filepath.Glob("testdata/real/*.std*")
	if err != nil || len(paths) == 0 {
		tb.Fatalf("no captured output in testdata/real: %v", err)
	}
	var out []string
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
			if l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}

func TestParseCRILine(t *testing.T) {
	ts := time.Date(2026, 8, 27, 12, 45, 20, 123456789, time.UTC)
	cases := []struct {
		name    string
		line    string
		wantErr bool
		stream  string
		partial bool
		msg     string
		time    time.Time
	}{
		{name: "full stdout", line: "2026-08-27T12:45:20.123456789Z stdout F hello world\n", stream: "stdout", msg: "hello world", time: ts},
		{name: "partial stderr", line: "2026-08-27T12:45:20.123456789Z stderr P part one", stream: "stderr", partial: true, msg: "part one", time: ts},
		// containerd writes time.RFC3339Nano: trailing zeros of the fraction are cut.
		{name: "short fraction", line: "2026-08-27T12:45:20.1Z stdout F x", stream: "stdout", msg: "x", time: ts.Truncate(time.Second).Add(100 * time.Millisecond)},
		{name: "no fraction, zone offset", line: "2026-08-27T14:45:20+02:00 stdout F x", stream: "stdout", msg: "x", time: ts.Truncate(time.Second)},
		{name: "tags after colon", line: "2026-08-27T12:45:20.123456789Z stdout F:x:y msg", stream: "stdout", msg: "msg", time: ts},
		{name: "P with more tags", line: "2026-08-27T12:45:20.123456789Z stdout P:x msg", stream: "stdout", partial: true, msg: "msg", time: ts},
		{name: "empty message", line: "2026-08-27T12:45:20.123456789Z stdout F \n", stream: "stdout", msg: "", time: ts},
		{name: "no message field", line: "2026-08-27T12:45:20.123456789Z stdout F", stream: "stdout", msg: "", time: ts},
		{name: "tabs kept", line: "2026-08-27T12:45:20.123456789Z stdout F a\tb  c", stream: "stdout", msg: "a\tb  c", time: ts},
		{name: "bad stream", line: "2026-08-27T12:45:20.123456789Z stdin F x", wantErr: true},
		{name: "no tag", line: "2026-08-27T12:45:20.123456789Z stdout ", wantErr: true},
		{name: "bad timestamp", line: "2026-13-27T12:45:20Z stdout F x", wantErr: true},
		{name: "not a CRI line", line: "Aug 27 12:45:20 node kubelet[1]: hello", wantErr: true},
		{name: "binary junk", line: "\x00\x01\xff\xfe stdout F", wantErr: true},
		{name: "empty", line: "", wantErr: true},
		{name: "just newline", line: "\n", wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := ParseCRILine([]byte(c.line))
			if c.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", l)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Stream != c.stream || l.Partial != c.partial || string(l.Message) != c.msg || !l.Time.Equal(c.time) {
				t.Errorf("got %s %v %q %s, want %s %v %q %s", l.Stream, l.Partial, l.Message, l.Time, c.stream, c.partial, c.msg, c.time)
			}
		})
	}
}

// FuzzParseCRILine: never panics; what parses re-serialises to a line that parses the same; the
// message is the end of the input; a partial line is seen by the scanner's fast partial check.
func FuzzParseCRILine(f *testing.F) {
	for _, s := range []string{
		"2026-08-27T12:45:20.123456789Z stdout F hello\n",
		"2026-08-27T12:45:20.1Z stderr P part",
		"2026-08-27T12:45:20+02:00 stdout F:x msg",
		"2026-08-27T12:45:20.123456789Z stdout F",
		"\x00\xff stdout F x",
		"",
	} {
		f.Add([]byte(s))
	}
	// What the real programs wrote (testdata/real), each line as containerd's CRI logger writes
	// it for kubelet, a long one cut into partial lines.
	for _, msg := range realLines(f) {
		for _, stream := range []string{"stdout", "stderr"} {
			rest := msg
			if len(rest) > 80 {
				f.Add([]byte("2026-08-27T12:45:20.123456789Z " + stream + " P " + rest[:80] + "\n"))
				rest = rest[80:]
			}
			f.Add([]byte("2026-08-27T12:45:20.123456789Z " + stream + " F " + rest + "\n"))
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		if i := bytes.IndexByte(line, '\n'); i >= 0 && i < len(line)-1 {
			return // the scanner hands over single lines only
		}
		l, err := ParseCRILine(line)
		if err != nil {
			return
		}
		if l.Stream != "stdout" && l.Stream != "stderr" {
			t.Fatalf("stream %q", l.Stream)
		}
		trimmed := bytes.TrimSuffix(line, []byte{'\n'})
		if !bytes.HasSuffix(trimmed, l.Message) {
			t.Fatalf("message %q is not the end of the line %q", l.Message, line)
		}
		// The scanner sees lines with their newline.
		if l.Partial != hasPartialLine(append(trimmed[:len(trimmed):len(trimmed)], '\n')) {
			t.Fatalf("partial=%v but the scanner's partial check disagrees for %q", l.Partial, line)
		}
		tag := "F"
		if l.Partial {
			tag = "P"
		}
		again := []byte(l.Time.Format(time.RFC3339Nano) + " " + l.Stream + " " + tag + " " + string(l.Message))
		l2, err := ParseCRILine(again)
		if err != nil {
			t.Fatalf("re-serialised %q does not parse: %v", again, err)
		}
		if !l2.Time.Equal(l.Time) || l2.Stream != l.Stream || l2.Partial != l.Partial || !bytes.Equal(l2.Message, l.Message) {
			t.Fatalf("round trip changed %+v into %+v", l, l2)
		}
	})
}
