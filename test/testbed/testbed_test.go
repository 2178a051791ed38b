package testbed_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// quickProbe makes a failing validation return after 1 s instead of Istio's 5 s.
const quickProbe = "--probe-timeout=1s"

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// sidecarNetns is a namespace with Istio's default sidecar rules written by pilot-agent.
func sidecarNetns(t *testing.T, ctx context.Context, env []string, extraArgs ...string) *testbed.Netns {
	t.Helper()
	ns := testbed.NewNetns(t)
	args := append(testbed.DefaultSidecarArgs(), extraArgs...)
	if err := ns.IstioIptablesEnv(ctx, env, args...); err != nil {
		t.Fatal(err)
	}
	return ns
}

func requireValidation(t *testing.T, ctx context.Context, ns *testbed.Netns, want bool) {
	t.Helper()
	ok, out, err := ns.ValidateWith(ctx, quickProbe)
	if err != nil {
		t.Fatal(err)
	}
	if ok != want {
		t.Fatalf("Istio validation = %v, want %v; pilot-agent said:\n%s", ok, want, out)
	}
}

func TestNetnsLifecycle(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := testbed.NewNetns(t)
	if !strings.HasPrefix(ns.Name, "md-") {
		t.Errorf("name %q lacks the md- prefix", ns.Name)
	}
	if _, err := os.Stat(ns.Path()); err != nil {
		t.Fatalf("netns file: %v", err)
	}
	out, err := ns.Exec(ctx, "ip", "-br", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{ns.IPv4.String(), ns.IPv6.String()} {
		if !strings.Contains(string(out), addr) {
			t.Errorf("eth0 lacks %s:\n%s", addr, out)
		}
	}
	if _, err := ns.Exec(ctx, "false"); err == nil {
		t.Error("Exec of a failing command returned no error")
	}
	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
		t.Errorf("netns file still there after Delete: %v", err)
	}
	if err := ns.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func TestSingleStackOptions(t *testing.T) {
	t.Parallel()
	v4 := testbed.NewNetns(t, testbed.IPv4Only())
	if !v4.IPv4.IsValid() || v4.IPv6.IsValid() {
		t.Errorf("IPv4Only: got %v and %v", v4.IPv4, v4.IPv6)
	}
	v6 := testbed.NewNetns(t, testbed.IPv6Only())
	if v6.IPv4.IsValid() || !v6.IPv6.IsValid() {
		t.Errorf("IPv6Only: got %v and %v", v6.IPv4, v6.IPv6)
	}
}

func TestDefaultSidecarRulesValidate(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := sidecarNetns(t, ctx, nil)
	ok, out, err := ns.Validate(ctx)
	if err != nil || !ok {
		t.Fatalf("Validate = %v, %v; pilot-agent said:\n%s", ok, err, out)
	}
	save, err := ns.IptablesSave(ctx, testbed.Nft, testbed.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001") {
		t.Errorf("iptables-nft-save lacks the outbound redirect:\n%s", save)
	}

	if err := ns.FlushChain(ctx, testbed.Nft, testbed.IPv4, "nat", "ISTIO_OUTPUT"); err != nil {
		t.Fatal(err)
	}
	requireValidation(t, ctx, ns, false)
}

func TestDeleteRuleBreaksCapture(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := sidecarNetns(t, ctx, nil)
	if err := ns.DeleteRule(ctx, testbed.Nft, testbed.IPv4, "nat", "OUTPUT", "-j", "ISTIO_OUTPUT"); err != nil {
		t.Fatal(err)
	}
	requireValidation(t, ctx, ns, false)
}

func TestRedirectToWrongPortBreaksCapture(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := sidecarNetns(t, ctx, nil)
	if err := ns.RedirectTo(ctx, testbed.Nft, testbed.IPv4, "ISTIO_IN_REDIRECT", 15999); err != nil {
		t.Fatal(err)
	}
	save, err := ns.IptablesSave(ctx, testbed.Nft, testbed.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15999") {
		t.Fatalf("redirect not rewritten:\n%s", save)
	}
	requireValidation(t, ctx, ns, false)
}

func TestLegacyBackend(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := sidecarNetns(t, ctx, nil, "--force-iptables-binary", "legacy")
	tr, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tr.LegacySaveV4, "-A ISTIO_OUTPUT") {
		t.Errorf("no ISTIO_OUTPUT rules in iptables-legacy-save:\n%s", tr.LegacySaveV4)
	}
	if strings.Contains(tr.NftRuleset, "ISTIO") {
		t.Errorf("forced legacy run left Istio chains in nftables:\n%s", tr.NftRuleset)
	}
	requireValidation(t, ctx, ns, true)
	if err := ns.FlushChain(ctx, testbed.Legacy, testbed.IPv4, "nat", "ISTIO_OUTPUT"); err != nil {
		t.Fatal(err)
	}
	requireValidation(t, ctx, ns, false)
}

func TestNativeNftables(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := sidecarNetns(t, ctx, nil, "--native-nftables")
	ruleset, err := ns.NftRuleset(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ruleset, "table inet istio-proxy-nat") {
		t.Fatalf("no native Istio table:\n%s", ruleset)
	}
	requireValidation(t, ctx, ns, true)
	if _, err := ns.Nft(ctx, "flush", "chain", "inet", "istio-proxy-nat", "output"); err != nil {
		t.Fatal(err)
	}
	requireValidation(t, ctx, ns, false)
}

func TestTproxy(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	args := append(testbed.DefaultSidecarArgs(), "-m", "TPROXY") // the later -m wins
	ns := testbed.NewNetns(t)
	if err := ns.IstioIptables(ctx, args...); err != nil {
		t.Fatal(err)
	}
	save, err := ns.IptablesSave(ctx, testbed.Nft, testbed.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "TPROXY") {
		t.Errorf("no TPROXY rule:\n%s", save)
	}
	requireValidation(t, ctx, ns, true)
}

func TestDualStackNeedsIstioDualStack(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	// A dual-stack pod whose first address is IPv4 gets IPv4 rules only...
	plain := sidecarNetns(t, ctx, nil)
	// ...unless proxyMetadata sets ISTIO_DUAL_STACK.
	dual := sidecarNetns(t, ctx, []string{"ISTIO_DUAL_STACK=true"})
	for _, c := range []struct {
		ns   *testbed.Netns
		want bool
	}{{plain, false}, {dual, true}} {
		save, err := c.ns.IptablesSave(ctx, testbed.Nft, testbed.IPv6)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(save, "-A ISTIO_OUTPUT"); got != c.want {
			t.Errorf("IPv6 ISTIO_OUTPUT rules present = %v, want %v:\n%s", got, c.want, save)
		}
	}
}

func TestIPv6OnlyValidatesOverIPv6(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := testbed.NewNetns(t, testbed.IPv6Only())
	if err := ns.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	ok, out, err := ns.Validate(ctx)
	if err != nil || !ok {
		t.Fatalf("Validate = %v, %v:\n%s", ok, err, out)
	}
	if !strings.Contains(out, "[::1]:15006") {
		t.Errorf("validation did not listen on IPv6:\n%s", out)
	}
}

func TestTraceUnchangedByReads(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := sidecarNetns(t, ctx, nil)
	before, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Reads that create nothing: what a well-behaved reader may do.
	if _, err := ns.Exec(ctx, "iptables-legacy-save"); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.NftRuleset(ctx, true); err != nil {
		t.Fatal(err)
	}
	after, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); d != "" {
		t.Errorf("a read-only pass changed the namespace:\n%s", d)
	}
	if before != after {
		t.Error("Diff is empty but the traces differ")
	}
}

// TestTraceSeesLegacyTableCreation proves the trace catches the classic reader bug:
// `iptables-legacy -t nat -S` creates the legacy nat table it lists.
func TestTraceSeesLegacyTableCreation(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	ns := testbed.NewNetns(t)
	before, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Iptables(ctx, testbed.Legacy, testbed.IPv4, "-t", "nat", "-S"); err != nil {
		t.Fatal(err)
	}
	after, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := before.Diff(after)
	if !strings.Contains(d, "/proc/net/ip_tables_names changed") || !strings.Contains(d, "+ nat") {
		t.Errorf("trace missed the legacy nat table:\n%s", d)
	}
}

// TestTraceSeesZtunnelStandIn proves the trace catches a socket left listening, and that the
// stand-in binds ztunnel's in-pod sockets, less those left out, in single-stack namespaces too.
func TestTraceSeesZtunnelStandIn(t *testing.T) {
	t.Parallel()
	for _, opts := range [][]testbed.Option{nil, {testbed.IPv4Only()}} {
		ctx := testContext(t)
		ns := testbed.NewNetns(t, opts...)
		before, err := ns.Trace(ctx)
		if err != nil {
			t.Fatal(err)
		}
		testbed.ZtunnelStandIn(t, ns.Path(), "tcp/15053", "udp/15053")
		after, err := ns.Trace(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d := before.Diff(after)
		for _, port := range []string{":15001", ":15006", ":15008"} {
			if !strings.Contains(d, port) {
				t.Errorf("trace missed the listener on %s:\n%s", port, d)
			}
		}
		if strings.Contains(d, ":15053") {
			t.Errorf("the stand-in bound DNS though told not to:\n%s", d)
		}
	}
}

// BenchmarkSidecarNetns measures what most privileged tests pay: a namespace, Istio's default
// sidecar rules, and the namespace's deletion.
func BenchmarkSidecarNetns(b *testing.B) {
	ctx := b.Context()
	for b.Loop() {
		ns, err := testbed.Create(ctx, testbed.WithPilotAgent(testbed.PilotAgent(b)))
		if err != nil {
			b.Fatal(err)
		}
		if err := ns.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
			b.Fatal(err)
		}
		if err := ns.Delete(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidate(b *testing.B) {
	ns := testbed.NewNetns(b)
	if err := ns.IstioIptables(b.Context(), testbed.DefaultSidecarArgs()...); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if ok, out, err := ns.Validate(b.Context()); err != nil || !ok {
			b.Fatal(ok, err, out)
		}
	}
}

// TestTraceSeesIPSetMember proves the trace catches an ipset member added: istio-cni's probe sets
// in iptables mode are ipsets, which no -save output or nft ruleset shows.
func TestTraceSeesIPSetMember(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	writer := testbed.AmbientInpod(t)
	ns := testbed.NewNetns(t, testbed.IPv4Only())
	if err := testbed.WriteAmbientRules(ctx, writer, ns.Path(), "--host"); err != nil {
		t.Fatal(err)
	}
	before, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(before.IPSets, "istio-inpod-probes-v4 hash:ip") {
		t.Fatalf("trace does not list istio-cni's probe set: %q", before.IPSets)
	}
	if err := testbed.WriteAmbientRules(ctx, writer, ns.Path(), "--host", "--probe-ips", "10.9.8.7"); err != nil {
		t.Fatal(err)
	}
	after, err := ns.Trace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); !strings.Contains(d, "--- ipsets changed") || !strings.Contains(d, "10.9.8.7") {
		t.Errorf("trace missed the probe set's new member:\n%s", d)
	}
}
