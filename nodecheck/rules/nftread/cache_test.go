package nftread

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// fakeClock is a Cache's clock that moves only when told, so that confirmGap passes without
// sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

func newTestCache() (*Cache, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	return &Cache{now: clk.now}, clk
}

// nsGeneration is the 32-bit ruleset generation of the namespace at path (GETGEN).
func nsGeneration(t testing.TB, ctx context.Context, path string) uint32 {
	t.Helper()
	conn, err := dialIn(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var gen uint32
	if err := exchange(ctx, conn, path, func(tr *transport, _ syscall.RawConn) error {
		var err error
		gen, err = generation(tr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return gen
}

// requireCookie skips on a kernel without SO_NETNS_COOKIE, where the Cache caches nothing.
func requireCookie(t testing.TB, ctx context.Context, path string) {
	t.Helper()
	conn, err := dialIn(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	_ = exchange(ctx, conn, path, func(_ *transport, raw syscall.RawConn) error {
		_, ok = netnsCookie(raw)
		return nil
	})
	if !ok {
		t.Skip("no SO_NETNS_COOKIE on this kernel (before 5.14): the cache stores nothing")
	}
}

// readVia reads path through c and checks what the read did: a hit or a dump.
func readVia(t testing.TB, ctx context.Context, c *Cache, path string, wantHit bool) *Result {
	t.Helper()
	before := c.Stats()
	res, err := c.Read(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	after := c.Stats()
	if hit := after.Hits > before.Hits; hit != wantHit {
		t.Fatalf("read of %s: hit %v, want %v (stats before %+v, after %+v)", path, hit, wantHit, before, after)
	}
	return res
}

// prime reads path until its entry is served: the read that stores it, and the one that
// confirms it after confirmGap.
func prime(t testing.TB, ctx context.Context, c *Cache, clk *fakeClock, path string) {
	t.Helper()
	readVia(t, ctx, c, path, false)
	clk.advance(confirmGap)
	readVia(t, ctx, c, path, false)
	readVia(t, ctx, c, path, true)
}

func fullRead(t testing.TB, ctx context.Context, path string) *Result {
	t.Helper()
	res, err := Read(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// requireEqual fails unless got is what a full read gives, down to nil and empty slices.
func requireEqual(t testing.TB, what string, got, want *Result) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s differs from a full read:\n%s", what, resultDiff(got, want))
	}
}

func resultDiff(got, want *Result) string {
	var out string
	for _, s := range want.Sets {
		if g := got.Set(s.Backend, s.Family); g == nil || g.Save() != s.Save() {
			out += fmt.Sprintf("%s %s:\n%s", s.Backend, s.Family, lineDiff(saveOf(g), s.Save()))
		}
	}
	return out + fmt.Sprintf("got  %d sets, named %+v, other %q\nwant %d sets, named %+v, other %q",
		len(got.Sets), got.NamedSets, got.OtherTables, len(want.Sets), want.NamedSets, want.OtherTables)
}

// nativeSetScript is a native table with a set, the shape of Istio's native rules: ports is
// what a rule looks up, port the rule's own redirect port, so two namespaces written with it
// differ in content after the same number of transactions.
func nativeSetScript(port int) string {
	return fmt.Sprintf(`table inet istio-test-nat {
	set ports {
		type inet_service
		elements = { 80, 443 }
	}
	chain output {
		type nat hook output priority -100; policy accept;
		tcp dport @ports redirect to :%d
	}
}`, port)
}

func TestCacheServesUnchanged(t *testing.T) {
	cases := []struct {
		name string
		sc   scenario
	}{
		{"iptables-nft sidecar", scenario{env: dualStack, args: testbed.DefaultSidecarArgs()}},
		{"native tproxy", scenario{env: dualStack, args: withArgs(map[string]string{"-m": "TPROXY"}, "--native-nftables")}},
		{"native with a set", scenario{after: func(ctx context.Context, ns *testbed.Netns) error {
			return ns.NftScript(ctx, nativeSetScript(15001))
		}}},
		{"fresh namespace", scenario{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			ns := setUpScenario(t, ctx, tc.sc)
			requireCookie(t, ctx, ns.Path())
			want := fullRead(t, ctx, ns.Path())
			gen := nsGeneration(t, ctx, ns.Path())
			c, clk := newTestCache()

			stored := readVia(t, ctx, c, ns.Path(), false)
			// Not yet served: a read right after the first, at the same generation, still dumps.
			readVia(t, ctx, c, ns.Path(), false)
			clk.advance(confirmGap)
			confirmed := readVia(t, ctx, c, ns.Path(), false)
			hit := readVia(t, ctx, c, ns.Path(), true)
			again := readVia(t, ctx, c, ns.Path(), true)
			for what, got := range map[string]*Result{"stored read": stored, "confirming read": confirmed, "hit": hit, "second hit": again} {
				requireEqual(t, what, got, want)
			}
			if hit == again {
				t.Error("two hits returned the same *Result: callers would share it")
			}
			if s := c.Stats(); s.Hits != 2 || s.Dumps != 3 || s.Uncacheable != 0 || s.Entries != 1 {
				t.Errorf("stats %+v, want 2 hits, 3 dumps, none uncacheable, 1 entry", s)
			}
			if g := nsGeneration(t, ctx, ns.Path()); g != gen {
				t.Errorf("generation moved from %d to %d while only reading", gen, g)
			}
		})
	}
}

// TestCacheSeesChange: every kind of change a pod's rules go through is a new generation, so
// the next read dumps and shows it, and the cache then serves the new rules.
func TestCacheSeesChange(t *testing.T) {
	sidecar := scenario{env: dualStack, args: testbed.DefaultSidecarArgs()}
	withSet := scenario{after: func(ctx context.Context, ns *testbed.Netns) error {
		return ns.NftScript(ctx, nativeSetScript(15001))
	}}
	cases := []struct {
		name   string
		sc     scenario
		change func(context.Context, *testbed.Netns) error
	}{
		{"rule added", sidecar, func(ctx context.Context, ns *testbed.Netns) error {
			return ns.Iptables(ctx, testbed.Nft, testbed.IPv4, "-t", "nat", "-I", "ISTIO_OUTPUT", "-d", "10.9.9.9/32", "-j", "RETURN")
		}},
		{"chain flushed", sidecar, func(ctx context.Context, ns *testbed.Netns) error {
			return ns.FlushChain(ctx, testbed.Nft, testbed.IPv6, "nat", "ISTIO_REDIRECT")
		}},
		{"set element added", withSet, func(ctx context.Context, ns *testbed.Netns) error {
			_, err := ns.Nft(ctx, "add", "element", "inet", "istio-test-nat", "ports", "{ 8080 }")
			return err
		}},
		{"native rule replaced", withSet, func(ctx context.Context, ns *testbed.Netns) error {
			_, err := ns.Nft(ctx, "flush", "chain", "inet", "istio-test-nat", "output")
			return err
		}},
		{"table deleted", withSet, func(ctx context.Context, ns *testbed.Netns) error {
			_, err := ns.Nft(ctx, "delete", "table", "inet", "istio-test-nat")
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			ns := setUpScenario(t, ctx, tc.sc)
			requireCookie(t, ctx, ns.Path())
			c, clk := newTestCache()
			prime(t, ctx, c, clk, ns.Path())
			before := fullRead(t, ctx, ns.Path())
			gen := nsGeneration(t, ctx, ns.Path())

			if err := tc.change(ctx, ns); err != nil {
				t.Fatal(err)
			}
			if g := nsGeneration(t, ctx, ns.Path()); g == gen {
				t.Fatalf("the change left the generation at %d", gen)
			}
			want := fullRead(t, ctx, ns.Path())
			if reflect.DeepEqual(want, before) {
				t.Fatal("the change did not change what a full read gives")
			}
			requireEqual(t, "read after the change", readVia(t, ctx, c, ns.Path(), false), want)
			// The new rules are cached in their turn.
			clk.advance(confirmGap)
			requireEqual(t, "confirming read", readVia(t, ctx, c, ns.Path(), false), want)
			requireEqual(t, "hit", readVia(t, ctx, c, ns.Path(), true), want)
		})
	}
}

// TestCacheKeepsNamespacesApart: two namespaces written the same way, at the same generation,
// with different rules, are never served each other's entry; nor is a namespace made after
// one was deleted (maybe on the same inode).
func TestCacheKeepsNamespacesApart(t *testing.T) {
	ctx := testContext(t)
	a, b := testbed.NewNetns(t), testbed.NewNetns(t)
	requireCookie(t, ctx, a.Path())
	for i, ns := range []*testbed.Netns{a, b} {
		if err := ns.NftScript(ctx, nativeSetScript(15001+i)); err != nil {
			t.Fatal(err)
		}
	}
	genA, genB := nsGeneration(t, ctx, a.Path()), nsGeneration(t, ctx, b.Path())
	if genA != genB {
		t.Fatalf("generations %d and %d: the test needs two namespaces at the same one", genA, genB)
	}
	wantA, wantB := fullRead(t, ctx, a.Path()), fullRead(t, ctx, b.Path())
	if reflect.DeepEqual(wantA, wantB) {
		t.Fatal("the two namespaces read the same: the test needs different rules")
	}

	c, clk := newTestCache()
	prime(t, ctx, c, clk, a.Path())
	requireEqual(t, "first read of b", readVia(t, ctx, c, b.Path(), false), wantB)
	clk.advance(confirmGap)
	requireEqual(t, "confirming read of b", readVia(t, ctx, c, b.Path(), false), wantB)
	requireEqual(t, "hit of b", readVia(t, ctx, c, b.Path(), true), wantB)
	requireEqual(t, "hit of a", readVia(t, ctx, c, a.Path(), true), wantA)

	// a goes; a new namespace with other rules at the same generation takes its place.
	inodeA := netnsInode(t, a.Path())
	if err := a.Delete(); err != nil {
		t.Fatal(err)
	}
	n := testbed.NewNetns(t)
	if err := n.NftScript(ctx, nativeSetScript(15003)); err != nil {
		t.Fatal(err)
	}
	if g := nsGeneration(t, ctx, n.Path()); g != genA {
		t.Fatalf("new namespace at generation %d, want %d like the deleted one", g, genA)
	}
	t.Logf("deleted namespace's inode %d, new one's %d", inodeA, netnsInode(t, n.Path()))
	requireEqual(t, "first read of the new namespace", readVia(t, ctx, c, n.Path(), false), fullRead(t, ctx, n.Path()))

	// The deleted namespace's entry goes once it has not been read for MaxAge.
	if s := c.Stats(); s.Entries != 3 {
		t.Fatalf("%d entries, want a's, b's and the new namespace's", s.Entries)
	}
	clk.advance(DefaultMaxAge / 2)
	readVia(t, ctx, c, b.Path(), true)
	readVia(t, ctx, c, n.Path(), false) // confirms
	clk.advance(DefaultMaxAge/2 + time.Second)
	readVia(t, ctx, c, b.Path(), true)
	readVia(t, ctx, c, n.Path(), true)
	if err := b.NftScript(ctx, "add rule inet istio-test-nat output return"); err != nil {
		t.Fatal(err)
	}
	readVia(t, ctx, c, b.Path(), false) // stores b anew, which sweeps the entries gone stale
	if s := c.Stats(); s.Entries != 2 {
		t.Errorf("%d entries after MaxAge, want 2 (b and the new namespace; the deleted one's dropped)", s.Entries)
	}
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestCacheResultIsTheCallers: whatever a caller does to a Result it got, from the read that
// stored the entry, the one that confirmed it or a hit, the next hit is still a full read's.
func TestCacheResultIsTheCallers(t *testing.T) {
	ctx := testContext(t)
	ns := setUpScenario(t, ctx, scenario{env: dualStack, args: testbed.DefaultSidecarArgs(),
		after: func(ctx context.Context, ns *testbed.Netns) error { return ns.NftScript(ctx, nativeSetScript(15001)) }})
	requireCookie(t, ctx, ns.Path())
	want := fullRead(t, ctx, ns.Path())
	if len(want.NamedSets) == 0 || len(want.Sets) < 3 {
		t.Fatalf("want iptables-nft and native rules and a set, read %d rule sets and %d sets", len(want.Sets), len(want.NamedSets))
	}
	c, clk := newTestCache()
	scribble(reflect.ValueOf(readVia(t, ctx, c, ns.Path(), false)))
	clk.advance(confirmGap)
	scribble(reflect.ValueOf(readVia(t, ctx, c, ns.Path(), false)))
	for i := range 3 {
		got := readVia(t, ctx, c, ns.Path(), true)
		requireEqual(t, fmt.Sprintf("hit %d", i), got, want)
		scribble(reflect.ValueOf(got))
	}
}

// scribble overwrites everything reachable from v that a caller could write: every string,
// bool and number, every byte of a key, and appends to every slice.
func scribble(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			scribble(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				scribble(f)
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			scribble(v.Index(i))
		}
		if v.CanSet() {
			v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
		}
	case reflect.String:
		v.SetString("scribbled")
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(v.Uint() ^ 0xff)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1)
	}
}

// TestCloneResultSharesNothing: cloneResult's copy is equal to the original (so a field it
// forgets shows here, as long as the snapshots fill it) and shares no writable memory with it.
func TestCloneResultSharesNothing(t *testing.T) {
	for _, name := range []string{"sidecar-dual-stack", "native-tproxy", "features-native", "features-iptables"} {
		t.Run(name, func(t *testing.T) {
			text, err := os.ReadFile(filepath.Join(snapshotDir, name+".snap"))
			if err != nil {
				t.Skipf("no stored snapshot: %v", err)
			}
			snap, err := parseSnapshot(string(text))
			if err != nil {
				t.Fatal(err)
			}
			orig, err := decode(snap)
			if err != nil {
				t.Fatal(err)
			}
			cp := cloneResult(orig)
			if !reflect.DeepEqual(cp, orig) {
				t.Fatalf("the copy differs:\n%s", resultDiff(cp, orig))
			}
			owned := map[uintptr]string{}
			addrs(reflect.ValueOf(orig), "orig", owned)
			shared := map[uintptr]string{}
			addrs(reflect.ValueOf(cp), "copy", shared)
			for a, where := range shared {
				if o, ok := owned[a]; ok {
					t.Errorf("%s is %s: shared memory", where, o)
				}
			}
		})
	}
}

// addrs records the address of everything writable reachable from v: what pointers point to
// and every slice element.
func addrs(v reflect.Value, path string, out map[uintptr]string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			out[v.Pointer()] = path
			addrs(v.Elem(), "*"+path, out)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			addrs(v.Field(i), path+"."+v.Type().Field(i).Name, out)
		}
	case reflect.Slice:
		for i := range v.Len() {
			e := v.Index(i)
			out[e.Addr().Pointer()] = fmt.Sprintf("%s[%d]", path, i)
			addrs(e, fmt.Sprintf("%s[%d]", path, i), out)
		}
	}
}

// TestCacheVolatile: a Result that can change without a transaction is never served from the
// cache, however often it reads the same.
func TestCacheVolatile(t *testing.T) {
	cases := []struct{ name, script string }{
		{"quota rule", `table inet istio-test-nat {
	chain output {
		type nat hook output priority -100; policy accept;
		quota over 1 mbytes return
		tcp dport 80 redirect to :15001
	}
}`},
		{"timeout set", `table inet istio-test-nat {
	set ports {
		type inet_service
		flags timeout
		elements = { 80 timeout 1h }
	}
	chain output {
		type nat hook output priority -100; policy accept;
		tcp dport @ports redirect to :15001
	}
}`},
		{"dynamic set", `table inet istio-test-nat {
	set seen {
		type ipv4_addr
		flags dynamic
	}
	chain output {
		type nat hook output priority -100; policy accept;
		update @seen { ip daddr }
		tcp dport 80 redirect to :15001
	}
}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			ns := testbed.NewNetns(t)
			if err := ns.NftScript(ctx, tc.script); err != nil {
				t.Fatal(err)
			}
			requireCookie(t, ctx, ns.Path())
			c, clk := newTestCache()
			for range 3 {
				readVia(t, ctx, c, ns.Path(), false)
				clk.advance(confirmGap)
			}
			if s := c.Stats(); s.Uncacheable != 3 || s.Entries != 0 {
				t.Errorf("stats %+v, want 3 uncacheable reads and no entry", s)
			}
		})
	}
}

// TestCacheChurn reads through the cache while transactions are committed back to back, each
// one adding or removing the element 8080 of a set: the generation's parity says which of the
// two rulesets it holds, so every entry the cache holds, confirmed or not, is checked against
// the ruleset of its generation after every read. Reads that straddle a commit must not be
// stored; once the churn stops, the cache's read is a full read's.
func TestCacheChurn(t *testing.T) {
	ctx := testContext(t)
	ns := testbed.NewNetns(t)
	if err := ns.NftScript(ctx, nativeSetScript(15001)); err != nil {
		t.Fatal(err)
	}
	requireCookie(t, ctx, ns.Path())
	fd, err := innetns.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	writer, err := nftables.New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		t.Fatal(err)
	}
	set := &nftables.Set{Table: &nftables.Table{Name: "istio-test-nat", Family: nftables.TableFamilyINet},
		Name: "ports", KeyType: nftables.TypeInetService}
	elem := []nftables.SetElement{{Key: binary.BigEndian.AppendUint16(nil, 8080)}}

	c, clk := newTestCache()
	base := nsGeneration(t, ctx, ns.Path()) // {80, 443}; one commit later {80, 443, 8080}
	churnCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		for i := 0; churnCtx.Err() == nil; i++ {
			op := writer.SetAddElements
			if i%2 == 1 {
				op = writer.SetDeleteElements
			}
			if err := op(set, elem); err != nil {
				done <- err
				return
			}
			if err := writer.Flush(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	checkEntries := func() {
		t.Helper()
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range c.entries {
			keys := 0
			if ports, ok := e.res.NamedSet("inet istio-test-nat", "ports"); ok {
				keys = len(ports.Keys)
			}
			if want := 2 + int((e.gen-base)%2); keys != want {
				t.Fatalf("entry at generation %d (base %d, confirmed %v) holds %d ports, want %d", e.gen, base, e.confirmed, keys, want)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	reads, failed := 0, 0
	for time.Now().Before(deadline) && !t.Failed() {
		if _, err := c.Read(ctx, ns.Path()); err != nil {
			failed++ // "the ruleset changed during each of 3 reads" is allowed
		}
		checkEntries()
		clk.advance(confirmGap / 4)
		reads++
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	moved := nsGeneration(t, ctx, ns.Path()) - base
	t.Logf("%d reads (%d failed for churn) during %d transactions: %+v", reads, failed, moved, c.Stats())
	if moved < 100 {
		t.Fatalf("only %d transactions during the churn", moved)
	}
	want := fullRead(t, ctx, ns.Path())
	for i := range 3 { // whether the last generation's entry was stored, confirmed or neither
		got, err := c.Read(ctx, ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		requireEqual(t, fmt.Sprintf("read %d after the churn", i), got, want)
		clk.advance(confirmGap)
	}
	if s := c.Stats(); s.Uncacheable == 0 {
		t.Logf("no read straddled a commit this time")
	}
}

// TestCacheBookkeeping runs the entry logic without a kernel: what is stored, confirmed,
// served, replaced, dropped and evicted.
func TestCacheBookkeeping(t *testing.T) {
	one := &Result{OtherTables: []string{"inet filter"}}
	other := &Result{OtherTables: []string{"inet other"}}
	type step struct {
		do        string // "offer", "offer-uncacheable", "advance", "lookup"
		cookie    uint64
		gen       uint32
		res       *Result
		d         time.Duration
		wantHit   bool
		wantCount int // entries after the step
	}
	cases := []struct {
		name  string
		max   int
		steps []step
	}{
		{"stored, confirmed after the gap, then served", 0, []step{
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 5, wantCount: 1},
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1}, // too soon to confirm
			{do: "lookup", cookie: 1, gen: 5, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 5, wantHit: true, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 6, wantCount: 1},
			{do: "lookup", cookie: 2, gen: 5, wantCount: 1},
		}},
		{"a different result at the same generation starts over", 0, []step{
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: other, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 5, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: other, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 5, wantHit: true, wantCount: 1},
		}},
		{"an uncacheable read drops the entry", 0, []step{
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "offer-uncacheable", cookie: 1, gen: 6, wantCount: 0},
			{do: "lookup", cookie: 1, gen: 5, wantCount: 0},
		}},
		{"a new generation replaces the entry", 0, []step{
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "offer", cookie: 1, gen: 6, res: other, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 5, wantCount: 1},
			{do: "lookup", cookie: 1, gen: 6, wantCount: 1},
		}},
		{"an entry not read for MaxAge goes", 0, []step{
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "advance", d: DefaultMaxAge + time.Second},
			{do: "lookup", cookie: 1, gen: 5, wantCount: 0},
		}},
		{"beyond MaxEntries the least recently read goes", 2, []step{
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 1},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 2, gen: 5, res: one, wantCount: 2},
			{do: "advance", d: confirmGap},
			{do: "offer", cookie: 1, gen: 5, res: one, wantCount: 2}, // 1 confirmed, read last
			{do: "offer", cookie: 3, gen: 5, res: one, wantCount: 2}, // 2 goes
			{do: "advance", d: confirmGap},
			{do: "lookup", cookie: 1, gen: 5, wantHit: true, wantCount: 2},
			{do: "offer", cookie: 2, gen: 5, res: one, wantCount: 2}, // 2 is new again: 3 goes
			{do: "lookup", cookie: 2, gen: 5, wantCount: 2},
			{do: "lookup", cookie: 1, gen: 5, wantHit: true, wantCount: 2},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, clk := newTestCache()
			c.MaxEntries = tc.max
			for i, s := range tc.steps {
				switch s.do {
				case "advance":
					clk.advance(s.d)
					continue
				case "offer", "offer-uncacheable":
					c.offer(keyedRead{keyed: true, cookie: s.cookie, gen: s.gen, start: clk.now()}, s.res, s.do == "offer")
				case "lookup":
					got := c.lookup(s.cookie, s.gen)
					if (got != nil) != s.wantHit {
						t.Fatalf("step %d: lookup(%d, %d) = %v, want a hit: %v", i, s.cookie, s.gen, got, s.wantHit)
					}
				}
				if n := c.Stats().Entries; n != s.wantCount {
					t.Fatalf("step %d (%s %d): %d entries, want %d", i, s.do, s.cookie, n, s.wantCount)
				}
			}
		})
	}
}

// TestNilCache: a nil Cache reads and counts nothing, and the package's Read is one.
func TestNilCache(t *testing.T) {
	ctx := testContext(t)
	ns := setUpScenario(t, ctx, scenario{env: dualStack, args: testbed.DefaultSidecarArgs()})
	var c *Cache
	got, err := c.Read(ctx, ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	requireEqual(t, "nil cache read", got, fullRead(t, ctx, ns.Path()))
	if s := c.Stats(); s != (CacheStats{}) {
		t.Errorf("nil cache stats %+v", s)
	}
}
