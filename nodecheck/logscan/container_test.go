package logscan

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// The logs here are written as containerd writes them for kubelet (openContainerLog), rotated as
// kubelet rotates them (kubeletRotate).

func searchFixture(t *testing.T) (ContainerLog, *containerLog, time.Time) {
	ref := ContainerLog{Dir: filepath.Join(t.TempDir(), "var/log/pods"), Namespace: "shop", Pod: "cart-7d9",
		UID: "0d6a9f8e-1c2b-4d3e-8f7a-6b5c4d3e2f10", Container: "cart"}
	return ref, openContainerLog(t, ref.Path()), time.Date(2026, 8, 27, 12, 0, 0, 0, time.UTC)
}

func lines(samples []Sample) []string {
	var out []string
	for _, s := range samples {
		out = append(out, s.Line)
	}
	return out
}

func TestSearchFirstSeconds(t *testing.T) {
	ref, log, t0 := searchFixture(t)
	refused := "dial tcp 10.96.12.7:8080: connect: connection refused"
	log.write(t0.Add(-time.Second), "stderr", "before the window: "+refused)
	log.write(t0, "stdout", "starting")
	log.write(t0.Add(100*time.Millisecond), "stderr", "first: "+refused)
	log.write(t0.Add(200*time.Millisecond), "stderr", "long: "+strings.Repeat("x", 40<<10)+refused) // cut into P lines
	log.write(t0.Add(300*time.Millisecond), "stderr", "third: java.net.ConnectException: Connection refused")
	log.write(t0.Add(time.Minute), "stderr", "after the window: "+refused)
	q, err := NewLogQuery(`[Cc]onnection refused|ECONNREFUSED`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := q.Search(t.Context(), ref, Window{Since: t0, Until: t0.Add(30 * time.Second), Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	l := lines(got)
	if len(l) != 3 || !strings.HasPrefix(l[0], "first: ") || !strings.HasPrefix(l[1], "long: x") || !strings.HasPrefix(l[2], "third: ") {
		t.Fatalf("got %q", l)
	}
	if !got[1].Truncated {
		t.Error("a 40 KiB message is cited whole")
	}
	if got[0].Origin != "shop/cart-7d9/cart" || got[0].Source != ref.Path() || !got[0].Time.Equal(t0.Add(100*time.Millisecond)) {
		t.Errorf("sample %+v", got[0])
	}
	one, err := q.Search(t.Context(), ref, Window{Since: t0})
	if err != nil || len(one) != 1 || !strings.HasPrefix(one[0].Line, "first: ") {
		t.Errorf("limit 1: %q %v", lines(one), err)
	}
}

// Last reads only the end of the log: a match at its start is out of reach of a small budget.
func TestSearchLast(t *testing.T) {
	ref, log, t0 := searchFixture(t)
	log.write(t0, "stdout", "Envoy proxy is NOT ready: early")
	for i := range 2000 {
		log.write(t0.Add(time.Duration(i)*time.Millisecond), "stdout", "info\tfiller line "+strings.Repeat("z", 100))
	}
	log.write(t0.Add(5*time.Second), "stdout", "Envoy proxy is NOT ready: late one")
	log.write(t0.Add(6*time.Second), "stdout", "Envoy proxy is NOT ready: late two")
	log.writeRaw(t0.Add(7*time.Second).Format(time.RFC3339Nano) + " stdout F Envoy proxy is NOT ready: half-writ")
	q, err := NewLogQuery(`Envoy proxy is NOT ready: `)
	if err != nil {
		t.Fatal(err)
	}
	got, err := q.Search(t.Context(), ref, Window{Last: true, Limit: 2, MaxBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if l := lines(got); len(l) != 2 || l[0] != "Envoy proxy is NOT ready: late one" || l[1] != "Envoy proxy is NOT ready: late two" {
		t.Fatalf("got %q", l)
	}
}

// A run of the container is one N.log with its rotated copies; another attempt is another file.
func TestSearchAttemptsAndRotation(t *testing.T) {
	ref, log, t0 := searchFixture(t)
	log.write(t0, "stdout", "attempt 0: connection refused")
	ref1 := ref
	ref1.Attempt = 1
	log1 := openContainerLog(t, ref1.Path())
	log1.write(t0.Add(time.Minute), "stdout", "attempt 1 starts: connection refused")
	kubeletRotate(t, log1, t0.Add(2*time.Minute), 5, nil)
	log1.write(t0.Add(3*time.Minute), "stdout", "attempt 1 after rotation: connection refused")
	kubeletRotate(t, log1, t0.Add(4*time.Minute), 5, nil) // the first rotated file is gzipped now
	q, err := NewLogQuery(`connection refused`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := q.Search(t.Context(), ref1, Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if l := lines(got); len(l) != 2 || !strings.HasPrefix(l[0], "attempt 1 starts") || !strings.HasPrefix(l[1], "attempt 1 after") {
		t.Fatalf("got %q", l)
	}
	ref1.Attempt = 7
	if _, err := q.Search(t.Context(), ref1, Window{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a run without a log: want fs.ErrNotExist, got %v", err)
	}
	ref1.Pod = "gone"
	if _, err := q.Search(t.Context(), ref1, Window{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a pod without logs: want fs.ErrNotExist, got %v", err)
	}
}

// MaxBytes bounds a search from the start: a match beyond it is not read.
func TestSearchBudget(t *testing.T) {
	ref, log, t0 := searchFixture(t)
	for i := range 1000 {
		log.write(t0.Add(time.Duration(i)*time.Millisecond), "stdout", strings.Repeat("q", 200))
	}
	log.write(t0.Add(2*time.Second), "stdout", "connection refused")
	q, err := NewLogQuery(`connection refused`)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := q.Search(t.Context(), ref, Window{MaxBytes: 64 << 10}); err != nil || len(got) != 0 {
		t.Errorf("beyond the budget: %q %v", lines(got), err)
	}
	if got, err := q.Search(t.Context(), ref, Window{}); err != nil || len(got) != 1 {
		t.Errorf("within the default budget: %q %v", lines(got), err)
	}
}

// Active holds a transient condition until its quiet period has passed, like its finding says.
func TestActive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var/log/pods")
	t0 := time.Date(2026, 8, 27, 12, 0, 0, 0, time.UTC)
	log := openContainerLog(t, filepath.Join(dir, "istio-system_istiod-5d8f7c9b6-x2k4q_0b6e1c9a-7f3d-4e2b-8a1c-5d9e2f4b7a60", "discovery", "0.log"))
	log.write(t0, "stderr", "error k8s.io/client-go@v0.18.0/tools/cache/reflector.go:125: Failed to watch *crd.IstioSomeCustomResource`…dial tcp 10.43.240.1:443: connect: connection refused")
	rules, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Minute)
	s, err := New(Config{PodLogDir: dir, Rules: rules, Since: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.Active(nodecheck.IstiodAPIServerUnreachable); ok {
		t.Error("active before any pass")
	}
	if _, err := s.Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	f, ok := s.Active(nodecheck.IstiodAPIServerUnreachable)
	if !ok || f.Code != nodecheck.IstiodAPIServerUnreachable || f.Severity != nodecheck.SeverityWarning {
		t.Errorf("a minute after: %v %+v", ok, f)
	}
	if _, ok := s.Active(nodecheck.IstioCNIErrors); ok {
		t.Error("a condition without evidence is active")
	}
	now = t0.Add(11 * time.Minute)
	if f, ok := s.Active(nodecheck.IstiodAPIServerUnreachable); ok {
		t.Errorf("after the quiet period: %+v", f)
	}
}

// A log that cannot be read is said in the logs, once while it stays unreadable and again when it
// comes back after being readable: it must not pass for a quiet node.
func TestUnreadableLogsAreWarnedOnce(t *testing.T) {
	rules, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	// A file where the pod log directory should be: listing it fails whoever we are.
	notADir := filepath.Join(t.TempDir(), "pods")
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	s, err := New(Config{PodLogDir: notADir, Rules: rules, Since: time.Hour,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	warnings := func() int { return strings.Count(logs.String(), "cannot read node logs") }
	for pass := 1; pass <= 2; pass++ {
		st, err := s.Scan(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "not a directory") {
			t.Fatalf("pass %d: errors %q, want the listing's", pass, st.Errors)
		}
		if warnings() != 1 {
			t.Fatalf("pass %d: %d warnings, want 1:\n%s", pass, warnings(), logs.String())
		}
	}
	if err := os.Remove(notADir); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if warnings() != 2 {
		t.Fatalf("%d warnings after the error came back, want 2:\n%s", warnings(), logs.String())
	}
}
