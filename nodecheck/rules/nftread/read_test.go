package nftread

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

var capture = flag.Bool("capture", false, "TestReadAgainstIstio also stores each scenario's netlink dumps and saves under testdata/snapshots")

const snapshotDir = "testdata/snapshots"

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// setUpScenario builds the scenario's namespace with the real tools.
func setUpScenario(t *testing.T, ctx context.Context, sc scenario) *testbed.Netns {
	t.Helper()
	ns := testbed.NewNetns(t, sc.opts...)
	if sc.args != nil {
		if err := ns.IstioIptablesEnv(ctx, sc.env, sc.args...); err != nil {
			t.Fatal(err)
		}
	}
	if sc.after != nil {
		if err := sc.after(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// TestReadAgainstIstio is the key test: Istio's own pilot-agent writes each scenario's rules
// in a fresh namespace, and every rule set Read returns must mean what iptables-nft-save (and
// ip6tables-nft-save) print in the same namespace, or, for native tables, what
// `nft list ruleset` says, as written down by hand in scenarios_test.go.
func TestReadAgainstIstio(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			ctx := testContext(t)
			ns := setUpScenario(t, ctx, sc)
			res, err := Read(ctx, ns.Path())
			if err != nil {
				t.Fatal(err)
			}
			saves := map[rules.Family]string{}
			for _, f := range []testbed.Family{testbed.IPv4, testbed.IPv6} {
				if saves[rules.Family(f)], err = ns.IptablesSave(ctx, testbed.Nft, f); err != nil {
					t.Fatal(err)
				}
			}
			checkResult(t, sc, res, saves)
			if *capture {
				storeSnapshot(t, ctx, sc, ns, saves)
			}
		})
	}
}

// TestDecodeSnapshots runs the same checks, unprivileged, on the dumps stored by
// `go test -run TestReadAgainstIstio -capture` (as root): the decoder is tested on the bytes
// the kernel really sent, on any machine.
func TestDecodeSnapshots(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			snap, saves := loadSnapshot(t, sc.name)
			res, err := decode(snap)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, sc, res, saves)
		})
	}
}

func checkResult(t *testing.T, sc scenario, res *Result, saves map[rules.Family]string) {
	t.Helper()
	for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
		var want string
		if sc.nft != "" {
			want = familyText(sc.nft, f)
		} else {
			set, err := rules.ParseSave(strings.NewReader(saves[f]), rules.BackendNft, f)
			if err != nil {
				t.Fatalf("parsing %s iptables-nft-save: %v", f, err)
			}
			want = set.Save()
		}
		if got := saveOf(res.Set(rules.BackendNft, f)); got != want {
			t.Errorf("%s iptables-nft rules differ from iptables-nft-save:\n%s", f, lineDiff(got, want))
		}
		want = ""
		if sc.native != "" {
			want = familyText(sc.native, f)
		}
		if got := saveOf(res.Set(rules.BackendNative, f)); got != want {
			t.Errorf("%s native rules differ from nft list ruleset:\n%s", f, lineDiff(got, want))
		}
	}
	if !slices.Equal(res.OtherTables, sc.other) {
		t.Errorf("OtherTables = %q, want %q", res.OtherTables, sc.other)
	}
	for _, s := range res.Sets {
		for _, tbl := range s.Tables {
			if tbl.Origin == "" {
				t.Errorf("%s %s table %s has no Origin", s.Backend, s.Family, tbl.Name)
			}
		}
	}
}

func saveOf(s *rules.RuleSet) string {
	if s == nil {
		return ""
	}
	return s.Save()
}

// lineDiff lists the lines only in got (+) and only in want (-), enough to see a wrong rule.
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	if b.Len() == 0 {
		return "(same lines, different order)\n--- got\n" + got + "--- want\n" + want
	}
	return b.String()
}

// The snapshot file holds one netlink message payload per line: the dump it came from, then
// the payload in hex. The saves and `nft list ruleset` of the same moment sit beside it.
func snapshotText(s *snapshot) string {
	var b strings.Builder
	b.WriteString("# nftread snapshot: one nf_tables message payload (nfgenmsg + attributes) per line, in hex\n")
	for _, sec := range []struct {
		name string
		msgs [][]byte
	}{{"table", s.Tables}, {"chain", s.Chains}, {"rule", s.Rules}, {"set", s.Sets}, {"elem", s.Elems}} {
		for _, m := range sec.msgs {
			fmt.Fprintf(&b, "%s %s\n", sec.name, hex.EncodeToString(m))
		}
	}
	return b.String()
}

func parseSnapshot(text string) (*snapshot, error) {
	s := &snapshot{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, h, ok := strings.Cut(line, " ")
		msg, err := hex.DecodeString(h)
		if !ok || err != nil {
			return nil, fmt.Errorf("line %d: want KIND HEX", n)
		}
		switch kind {
		case "table":
			s.Tables = append(s.Tables, msg)
		case "chain":
			s.Chains = append(s.Chains, msg)
		case "rule":
			s.Rules = append(s.Rules, msg)
		case "set":
			s.Sets = append(s.Sets, msg)
		case "elem":
			s.Elems = append(s.Elems, msg)
		default:
			return nil, fmt.Errorf("line %d: unknown dump %q", n, kind)
		}
	}
	return s, sc.Err()
}

func storeSnapshot(t *testing.T, ctx context.Context, sc scenario, ns *testbed.Netns, saves map[rules.Family]string) {
	t.Helper()
	snap, err := readSnapshot(ctx, ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	ruleset, err := ns.NftRuleset(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		".snap":               snapshotText(snap),
		".iptables-nft-save":  dropSaveDates(saves[rules.IPv4]),
		".ip6tables-nft-save": dropSaveDates(saves[rules.IPv6]),
		".nft":                ruleset,
	}
	if err := os.MkdirAll(snapshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for ext, content := range files {
		if err := os.WriteFile(filepath.Join(snapshotDir, sc.name+ext), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// dropSaveDates removes the "Generated/Completed on DATE" comments so captures do not churn.
func dropSaveDates(save string) string {
	var b strings.Builder
	for line := range strings.Lines(save) {
		if !strings.HasPrefix(line, "# Generated by") && !strings.HasPrefix(line, "# Completed on") {
			b.WriteString(line)
		}
	}
	return b.String()
}

func loadSnapshot(t *testing.T, name string) (*snapshot, map[rules.Family]string) {
	t.Helper()
	read := func(ext string) string {
		b, err := os.ReadFile(filepath.Join(snapshotDir, name+ext))
		if err != nil {
			t.Fatalf("%v (regenerate as root: go test -run TestReadAgainstIstio -capture ./nodecheck/rules/nftread/)", err)
		}
		return string(b)
	}
	snap, err := parseSnapshot(read(".snap"))
	if err != nil {
		t.Fatalf("%s.snap: %v", name, err)
	}
	return snap, map[rules.Family]string{rules.IPv4: read(".iptables-nft-save"), rules.IPv6: read(".ip6tables-nft-save")}
}

// TestReadLeavesNoTrace: reading must not create a table (legacy or nft), touch a chain or a
// counter, in a fresh namespace or in one with rules.
func TestReadLeavesNoTrace(t *testing.T) {
	for _, sc := range []scenario{
		{name: "fresh"},
		{name: "sidecar-dual-stack", env: dualStack, args: testbed.DefaultSidecarArgs()},
		{name: "native", env: dualStack, args: withArgs(map[string]string{"-m": "TPROXY"}, "--native-nftables")},
	} {
		t.Run(sc.name, func(t *testing.T) {
			ctx := testContext(t)
			ns := setUpScenario(t, ctx, sc)
			before, err := ns.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if _, err := Read(ctx, ns.Path()); err != nil {
					t.Fatal(err)
				}
			}
			after, err := ns.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(after); d != "" {
				t.Errorf("Read changed the namespace:\n%s", d)
			}
		})
	}
}

// TestReadClosesItsSocket: no file descriptor outlives a Read, however it ends.
func TestReadClosesItsSocket(t *testing.T) {
	ctx := testContext(t)
	ns := setUpScenario(t, ctx, scenario{env: dualStack, args: testbed.DefaultSidecarArgs()})
	before := openFDs(t)
	for range 50 {
		if _, err := Read(ctx, ns.Path()); err != nil {
			t.Fatal(err)
		}
	}
	// Cancelled at every point of a Read, from before it starts to after it ends: each Read
	// either completes or fails with the context's error, and leaves nothing open.
	cancelled := 0
	for i := range 200 {
		cctx, cancel := context.WithCancel(ctx)
		timer := time.AfterFunc(time.Duration(i)*2*time.Microsecond, cancel)
		_, err := Read(cctx, ns.Path())
		timer.Stop()
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, context.Canceled):
			cancelled++
		default:
			t.Fatalf("Read cancelled after %d µs: %v, want success or context.Canceled", 2*i, err)
		}
	}
	t.Logf("%d of 200 reads were cancelled", cancelled)
	if after := openFDs(t); after > before {
		t.Errorf("%d file descriptors open before 250 reads, %d after", before, after)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestReadNetnsGone(t *testing.T) {
	_, err := Read(context.Background(), "/var/run/netns/meshdoctor-no-such-netns")
	if !errors.Is(err, innetns.ErrNetnsGone) {
		t.Fatalf("Read of a missing netns: %v, want an error wrapping ErrNetnsGone", err)
	}
}

func TestReadNotANetns(t *testing.T) {
	_, err := Read(context.Background(), "/proc/self/ns/uts")
	if err == nil || errors.Is(err, innetns.ErrNetnsGone) {
		t.Fatalf("Read of a UTS namespace: %v, want a not-a-netns error", err)
	}
}

func TestReadCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Read(ctx, "/proc/self/ns/net"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read with a cancelled context: %v, want context.Canceled", err)
	}
}
