package xtlegacy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// newNetns is testbed.NewNetns for this package's privileged tests, which -short leaves out.
func newNetns(tb testing.TB) *testbed.Netns {
	tb.Helper()
	if testing.Short() {
		tb.Skip("privileged test bed test; -short runs unit tests only")
	}
	return testbed.NewNetns(tb)
}

func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// trace is ns.Trace without packet counters: in its first seconds a namespace's kernel sends
// ICMPv6 by itself (router solicitations, MLD reports on eth0), which moves the ip6tables
// counters whatever a reader does. Tables, chains, policies and rules are all kept.
func trace(tb testing.TB, ctx context.Context, ns *testbed.Netns) testbed.Trace {
	tb.Helper()
	tr, err := ns.Trace(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range []*string{&tr.LegacySaveV4, &tr.LegacySaveV6, &tr.NftSaveV4, &tr.NftSaveV6} {
		*s = counters.ReplaceAllString(*s, "[-]")
	}
	tr.NftRuleset = nftCounters.ReplaceAllString(tr.NftRuleset, "counter")
	return tr
}

var (
	counters    = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

func setByFamily(sets []*rules.RuleSet) map[rules.Family]*rules.RuleSet {
	m := map[rules.Family]*rules.RuleSet{}
	for _, s := range sets {
		m[s.Family] = s
	}
	return m
}

// TestReadMatchesIptablesLegacySave is the key test: for rules written by Istio's own
// istio-iptables (and by iptables-legacy-restore), Read sees what iptables-legacy-save sees,
// compared by meaning through rules.ParseSave, and leaves the namespace exactly as it was.
func TestReadMatchesIptablesLegacySave(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			ns := newNetns(t)
			ctx := testContext(t)
			if err := sc.write(ctx, ns); err != nil {
				t.Fatal(err)
			}
			before := trace(t, ctx, ns)

			sets, err := Read(ctx, ns.Path())
			if err != nil {
				t.Fatal(err)
			}

			if d := before.Diff(trace(t, ctx, ns)); d != "" {
				t.Errorf("Read changed the namespace:\n%s", d)
			}
			got := setByFamily(sets)
			if len(got) != len(sets) {
				t.Errorf("Read returned %d sets for %d families", len(sets), len(got))
			}
			for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
				save, err := ns.IptablesSave(ctx, testbed.Legacy, testbed.Family(f))
				if err != nil {
					t.Fatal(err)
				}
				set := got[f]
				if save == "" {
					if set != nil {
						t.Errorf("%v: iptables-legacy-save shows no table, Read returned:\n%s", f, set.Save())
					}
					continue
				}
				if set == nil {
					t.Errorf("%v: Read returned no set, iptables-legacy-save shows:\n%s", f, save)
					continue
				}
				if set.Backend != rules.BackendLegacy {
					t.Errorf("%v: backend %q", f, set.Backend)
				}
				want, err := parseSaveText(save, f)
				if sc.reviewed {
					var b []byte
					b, err = os.ReadFile(filepath.Join(familyDir(sc.name, f), "want.save"))
					want = string(b)
				}
				if err != nil {
					t.Fatal(err)
				}
				if g := set.Save(); g != want {
					t.Errorf("%v: Read and iptables-legacy-save differ:\n%s\niptables-legacy-save:\n%s",
						f, lineDiff(want, g), save)
				}
			}
		})
	}
}

// TestReadFreshNetnsCreatesNothing: in a namespace without legacy tables, Read finds none and
// creates none; a created table would change what Istio's backend detection sees.
func TestReadFreshNetnsCreatesNothing(t *testing.T) {
	ns := newNetns(t)
	ctx := testContext(t)
	before := trace(t, ctx, ns)
	if before.IPTablesNames != "" || before.IP6TablesNames != "" {
		t.Fatalf("fresh namespace already has legacy tables: %q %q", before.IPTablesNames, before.IP6TablesNames)
	}
	for range 3 {
		sets, err := Read(ctx, ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		if len(sets) != 0 {
			t.Errorf("Read found legacy tables in a fresh namespace:\n%s", saveAll(sets))
		}
	}
	after := trace(t, ctx, ns)
	if d := before.Diff(after); d != "" {
		t.Errorf("Read changed a fresh namespace:\n%s", d)
	}
	if after.IPTablesNames != "" || after.IP6TablesNames != "" {
		t.Errorf("legacy tables appeared: %q %q", after.IPTablesNames, after.IP6TablesNames)
	}
}

// TestNaiveReadsCreateTables shows that the trace above would catch a regression: listing a
// table the usual ways instantiates it in a fresh namespace, through iptables-legacy and through
// the very getsockopt Read uses when it is not guarded by the tables list.
func TestNaiveReadsCreateTables(t *testing.T) {
	ctx := testContext(t)
	t.Run("iptables-legacy -t nat -S", func(t *testing.T) {
		ns := newNetns(t)
		before := trace(t, ctx, ns)
		if err := ns.Iptables(ctx, testbed.Legacy, testbed.IPv4, "-t", "nat", "-S"); err != nil {
			t.Fatal(err)
		}
		after := trace(t, ctx, ns)
		if after.IPTablesNames != "nat\n" {
			t.Errorf("ip_tables_names after iptables-legacy -t nat -S = %q, want the nat table created", after.IPTablesNames)
		}
		if before.Diff(after) == "" {
			t.Error("the trace did not notice the created table")
		}
		// And Read reports the table iptables made, empty: a table is evidence, not rules.
		sets, err := Read(ctx, ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		if len(sets) != 1 || sets[0].Family != rules.IPv4 || len(sets[0].Tables) != 1 ||
			sets[0].Tables[0].Name != "nat" || sets[0].RuleCount() != 0 {
			t.Errorf("Read after a naive listing = %+v, want one empty IPv4 nat table", sets)
		}
	})
	t.Run("unguarded GET_INFO", func(t *testing.T) {
		ns := newNetns(t)
		err := innetns.Do(ctx, ns.Path(), func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			_, err = fetchTable(fd, &ipv6Layout, "mangle")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if after := trace(t, ctx, ns); after.IP6TablesNames != "mangle\n" {
			t.Errorf("ip6_tables_names after an unguarded GET_INFO = %q, want mangle created", after.IP6TablesNames)
		}
	})
}

// TestReadIgnoresXtablesLock: Read must work while someone holds the host's xtables lock, since
// it never takes it (istio-init must never wait for meshdoctor, nor meshdoctor for anyone).
func TestReadIgnoresXtablesLock(t *testing.T) {
	ns := newNetns(t)
	ctx := testContext(t)
	if err := ns.IstioIptables(ctx, legacyArgs(testbed.DefaultSidecarArgs()...)...); err != nil {
		t.Fatal(err)
	}
	const lockPath = "/run/xtables.lock"
	f, err := os.OpenFile(lockPath, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s does not exist; not creating it on the host", lockPath)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// If another process holds it already, that is the situation under test too.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil && !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatal(err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)

	readCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sets, err := Read(readCtx, ns.Path())
	if err != nil {
		t.Fatalf("Read with the xtables lock held: %v", err)
	}
	if len(sets) == 0 || sets[0].RuleCount() == 0 {
		t.Errorf("Read with the xtables lock held found no rules")
	}
}

// TestReadConcurrent reads several namespaces at once, each several times: every read sees its
// own namespace's rules only, whatever thread it lands on (run with -race).
func TestReadConcurrent(t *testing.T) {
	ctx := testContext(t)
	withRules, fresh := newNetns(t), newNetns(t)
	if err := withRules.IstioIptables(ctx, legacyArgs(testbed.DefaultSidecarArgs()...)...); err != nil {
		t.Fatal(err)
	}
	want, err := Read(ctx, withRules.Path())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			path, wantSets := withRules.Path(), want
			if i%2 == 1 {
				path, wantSets = fresh.Path(), nil
			}
			got, err := Read(ctx, path)
			if err != nil {
				t.Error(err)
				return
			}
			if saveAll(got) != saveAll(wantSets) {
				t.Errorf("read %d of %s:\n%s\nwant:\n%s", i, path, saveAll(got), saveAll(wantSets))
			}
		})
	}
	wg.Wait()
}

func saveAll(sets []*rules.RuleSet) string {
	var b strings.Builder
	for _, s := range sets {
		b.WriteString(s.Family.String() + "\n" + s.Save())
	}
	return b.String()
}

func TestReadNetnsGone(t *testing.T) {
	_, err := Read(context.Background(), "/var/run/netns/meshdoctor-no-such-netns")
	if !errors.Is(err, innetns.ErrNetnsGone) {
		t.Errorf("Read of a missing namespace: %v, want ErrNetnsGone", err)
	}
}

func TestReadCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Read(ctx, "/proc/self/ns/net"); !errors.Is(err, context.Canceled) {
		t.Errorf("Read with a cancelled context: %v", err)
	}
}

// TestTableNames: a missing list means the module is not loaded, hence no legacy tables.
func TestTableNames(t *testing.T) {
	dir := t.TempDir()
	names, err := tableNames(filepath.Join(dir, "ip_tables_names"))
	if err != nil || names != nil {
		t.Errorf("missing file: %v, %v; want no tables and no error", names, err)
	}
	path := filepath.Join(dir, "names")
	if err := os.WriteFile(path, []byte("raw\nmangle\n\nnat\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	names, err = tableNames(path)
	if err != nil || strings.Join(names, ",") != "raw,mangle,nat" {
		t.Errorf("tableNames = %v, %v", names, err)
	}
	if _, err := tableNames(dir); err == nil {
		t.Error("reading a directory as the list: no error")
	}
}

// TestCaptureTestdata rewrites testdata/ from live runs of every scenario (with -update only).
// For scenarios that are not reviewed it refuses to write a want.save that differs from what
// rules.ParseSave makes of iptables-legacy-save.
func TestCaptureTestdata(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite testdata/")
	}
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			ns := newNetns(t)
			ctx := testContext(t)
			if err := sc.write(ctx, ns); err != nil {
				t.Fatal(err)
			}
			raws, err := ReadRaw(ctx, ns.Path())
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
				dir := familyDir(sc.name, f)
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
				var mine []RawTable
				for _, r := range raws {
					if r.Family == f {
						mine = append(mine, r)
					}
				}
				if len(mine) == 0 {
					continue
				}
				save, err := ns.IptablesSave(ctx, testbed.Legacy, testbed.Family(f))
				if err != nil {
					t.Fatal(err)
				}
				set, err := decodeSet(f, mine)
				if err != nil {
					t.Fatal(err)
				}
				got := set.Save()
				if !sc.reviewed {
					want, err := parseSaveText(save, f)
					if err != nil {
						t.Fatal(err)
					}
					if got != want {
						t.Fatalf("%v: decoded rules differ from iptables-legacy-save:\n%s", f, lineDiff(want, got))
					}
				}
				files := map[string][]byte{
					"names":                    []byte(namesOf(mine)),
					"iptables-legacy-save.txt": []byte(dropSaveComments(save)),
					"want.save":                []byte(got),
				}
				for _, r := range mine {
					files[r.Name+".info"] = r.Info
					files[r.Name+".entries"] = r.Entries
				}
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				for name, b := range files {
					if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
		})
	}
}

func namesOf(raws []RawTable) string {
	var b strings.Builder
	for _, r := range raws {
		b.WriteString(r.Name + "\n")
	}
	return b.String()
}
