package nsread

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// Reading must leave the namespace exactly as it was: no table created (legacy tables are
// instantiated by merely asking for them), no rule, no counter touched. Checked on a fresh
// namespace, where a careless read would create tables, and on every backend Istio writes to.
func TestReadRulesLeavesNoTrace(t *testing.T) {
	cases := []struct {
		name string
		args []string
	}{
		{"fresh namespace", nil},
		{"iptables-nft", testbed.DefaultSidecarArgs()},
		{"iptables-legacy", append(testbed.DefaultSidecarArgs(), "--force-iptables-binary", "legacy")},
		{"native nftables", append(testbed.DefaultSidecarArgs(), "--native-nftables")},
		{"tproxy", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			n := testbed.NewNetns(t)
			if c.args != nil {
				if err := n.IstioIptables(ctx, c.args...); err != nil {
					t.Fatal(err)
				}
			}
			var snap rules.Snapshot
			n.Unchanged(ctx, t, "reading", func() {
				var err error
				snap, err = Reader{}.ReadRules(ctx, n.Path())
				if err != nil {
					t.Fatal(err)
				}
			})
			if c.args != nil && len(snap.Sets) == 0 {
				t.Errorf("read no rule set from a namespace with Istio rules")
			}
			if len(snap.Addrs) == 0 {
				t.Errorf("read no address; the test bed gives every namespace one")
			}
		})
	}
}

func TestReadRulesVanishedNamespace(t *testing.T) {
	testbed.RequirePrivileged(t)
	_, err := Reader{}.ReadRules(context.Background(), "/var/run/netns/md-never-existed")
	if !errors.Is(err, innetns.ErrNetnsGone) {
		t.Errorf("ReadRules on a missing namespace: %v, want ErrNetnsGone", err)
	}
}

// cpuTime is this process's user+system CPU time, plus that of its waited-for children.
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	total := time.Duration(0)
	for _, ru := range []syscall.Rusage{self, children} {
		total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return total
}

// benchNetns is a namespace with Istio's default rules in iptables-nft, dual stack with IPv6
// capture on, and Istio's probing leftovers (empty legacy tables) as on a real node.
func benchNetns(b *testing.B) *testbed.Netns {
	n := testbed.NewNetns(b)
	if err := n.IstioIptablesEnv(context.Background(), []string{"ISTIO_DUAL_STACK=true"}, testbed.DefaultSidecarArgs()...); err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkCheck is meshdoctor's whole capture check of one namespace: read every backend and
// family over netlink and getsockopt, build the expected rules, compare. Compare its cpu-ns/op
// with BenchmarkExecSaveBaseline's, measured in the same run.
func BenchmarkCheck(b *testing.B) {
	n := benchNetns(b)
	chk := &capture.Check{Reader: Reader{}}
	target := nodecheck.Target{Netns: n.Path(), Annotations: map[string]string{
		istiopod.AnnotationProxyConfig: `{"proxyMetadata":{"ISTIO_DUAL_STACK":"true"}}`}}
	ctx := context.Background()
	b.ReportAllocs()
	start := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		res, err := chk.Check(ctx, target)
		if err != nil || len(res.Findings) != 0 {
			b.Fatalf("check: %v %+v", err, res.Findings)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkExecSaveBaseline is what a person (or a naive tool) runs to see the same rules:
// iptables-save and ip6tables-save of both backends through nsenter, without even comparing.
func BenchmarkExecSaveBaseline(b *testing.B) {
	n := benchNetns(b)
	cmds := [][]string{
		{"iptables-nft-save"}, {"ip6tables-nft-save"}, {"iptables-legacy-save"}, {"ip6tables-legacy-save"},
	}
	start := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		for _, c := range cmds {
			out, err := exec.Command("nsenter", append([]string{"--net=" + n.Path()}, c...)...).CombinedOutput()
			if err != nil {
				b.Fatalf("%v: %v\n%s", c, err, out)
			}
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// The node's backend is the one holding the host's rules (kube-proxy's); a namespace stands in
// for the host here, with rules shaped like kube-proxy's.
func TestNodeBackend(t *testing.T) {
	cases := []struct {
		name    string
		backend testbed.Backend
		want    rules.Backend
	}{
		{"no rules", "", ""},
		{"kube-proxy on iptables-nft", testbed.Nft, rules.BackendNft},
		{"kube-proxy on iptables-legacy", testbed.Legacy, rules.BackendLegacy},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			n := testbed.NewNetns(t)
			if c.backend != "" {
				for _, args := range [][]string{
					{"-t", "nat", "-N", "KUBE-SERVICES"},
					{"-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"},
					{"-t", "nat", "-A", "OUTPUT", "-j", "KUBE-SERVICES"},
				} {
					if err := n.Iptables(ctx, c.backend, testbed.IPv4, args...); err != nil {
						t.Fatal(err)
					}
				}
			}
			got, err := NodeBackend(ctx, n.Path())
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("NodeBackend = %q, want %q", got, c.want)
			}
		})
	}
}

// BenchmarkReadRules is the whole read of one namespace (rules of every backend and family,
// addresses, mark routing, listeners); BenchmarkListeners is the sock_diag listing alone, in the
// same kind of namespace with ztunnel's in-pod listeners standing in: compare their cpu-ns/op.
func BenchmarkReadRules(b *testing.B) {
	n := benchNetns(b)
	testbed.ZtunnelStandIn(b, n.Path())
	ctx := context.Background()
	b.ReportAllocs()
	start := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		if _, err := (Reader{}).ReadRules(ctx, n.Path()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkReadRulesCached is BenchmarkReadRules with the agent's caching Reader on unchanged
// rules: the nftables share served from the cache, everything else read as before.
func BenchmarkReadRulesCached(b *testing.B) {
	n := benchNetns(b)
	testbed.ZtunnelStandIn(b, n.Path())
	ctx := context.Background()
	r := NewCachingReader()
	for i := range 2 { // stored, then confirmed a second later
		if _, err := r.ReadRules(ctx, n.Path()); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			time.Sleep(1100 * time.Millisecond)
		}
	}
	hits := r.NFT.Stats().Hits
	b.ReportAllocs()
	start := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.ReadRules(ctx, n.Path()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	if got := r.NFT.Stats().Hits - hits; got != uint64(b.N) {
		b.Fatalf("%d of %d reads served from the cache", got, b.N)
	}
}

func BenchmarkListeners(b *testing.B) {
	n := benchNetns(b)
	testbed.ZtunnelStandIn(b, n.Path())
	b.ReportAllocs()
	var start time.Duration
	// The loop runs inside one entry into the namespace: the listing's own cost, as ReadRules
	// pays it on the thread it already entered with.
	err := innetns.Do(context.Background(), n.Path(), func() error {
		start = cpuTime()
		b.ResetTimer()
		for b.Loop() {
			ls, err := listenersHere(context.Background(), n.Path(), true)
			if err != nil {
				return err
			}
			if len(ls) != 5 {
				return fmt.Errorf("listeners %v, want ztunnel's 5", ls)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// The single RTM_GETRULE dump of every family must give what one dump per family gave: the
// fwmark rules of both families, IPv4 first, each with whether its table routes all locally, and
// nothing of the other families the kernel dumps with them.
func TestMarkRoutesBothFamilies(t *testing.T) {
	ctx := context.Background()
	n := testbed.NewNetns(t)
	for _, args := range [][]string{
		{"-6", "rule", "add", "fwmark", "0x539/0xfff", "lookup", "134"},
		{"-6", "route", "add", "local", "default", "dev", "lo", "table", "134"},
		{"-4", "rule", "add", "fwmark", "0x539", "lookup", "133"},
		{"-4", "route", "add", "local", "default", "dev", "lo", "table", "133"},
		{"-4", "rule", "add", "fwmark", "0x2", "lookup", "135"},
	} {
		if out, err := n.Exec(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	snap, err := Reader{}.ReadRules(ctx, n.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.MarkRoute{
		{Family: rules.IPv4, Mark: 0x2, Mask: 0xffffffff, Table: 135},
		{Family: rules.IPv4, Mark: 0x539, Mask: 0xffffffff, Table: 133, LocalDefault: true},
		{Family: rules.IPv6, Mark: 0x539, Mask: 0xfff, Table: 134, LocalDefault: true},
	}
	if fmt.Sprint(snap.Routing) != fmt.Sprint(want) {
		t.Errorf("mark routes:\n got %+v\nwant %+v", snap.Routing, want)
	}
}

// TestCachingReader: a caching Reader reads what the zero Reader reads, before and after the
// rules change, serves unchanged nftables from its cache once the entry is confirmed (a second
// read a second after the first), and hands out snapshots whose changes reach no later read.
func TestCachingReader(t *testing.T) {
	ctx := context.Background()
	n := testbed.NewNetns(t)
	if err := n.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	caching := NewCachingReader()
	check := func(what string) {
		t.Helper()
		want, err := Reader{}.ReadRules(ctx, n.Path())
		if err != nil {
			t.Fatal(err)
		}
		got, err := caching.ReadRules(ctx, n.Path())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Sets, want.Sets) {
			t.Fatalf("%s: the caching Reader's rule sets differ from the zero Reader's", what)
		}
		// What a caller does to its snapshot stays with it.
		for _, s := range got.Sets {
			for _, tbl := range s.Tables {
				for _, c := range tbl.Chains {
					c.Rules = append(c.Rules[:0], rules.Rule{Target: rules.Target{Name: "DROP"}})
				}
			}
		}
	}
	check("first read")
	time.Sleep(1100 * time.Millisecond) // nftread's confirmGap
	check("confirming read")
	before := caching.NFT.Stats()
	check("cached read")
	if after := caching.NFT.Stats(); after.Hits != before.Hits+1 {
		t.Fatalf("the third read of unchanged rules was not served from the cache: %+v then %+v", before, after)
	}
	if err := n.Iptables(ctx, testbed.Nft, testbed.IPv4, "-t", "nat", "-I", "ISTIO_OUTPUT", "-d", "10.9.9.9/32", "-j", "RETURN"); err != nil {
		t.Fatal(err)
	}
	check("read after a rule was added")
	if s := caching.NFT.Stats(); s.Hits != before.Hits+1 {
		t.Errorf("a read after the change was served from the cache: %+v", s)
	}
}
