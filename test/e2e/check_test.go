// Package e2e runs the real meshdoctor binary against pod network namespaces whose capture rules
// were written by Istio's own pilot-agent, exactly as istio-init writes them, and then broken the
// ways nodes break them: bare namespaces checked with --netns, and pods on a real containerd
// whose istio-init is rendered as Istio's injection template renders it (pods_test.go), which
// meshdoctor discovers. Every scenario also asks Istio's own validation whether capture works,
// checks that meshdoctor agrees, and checks that meshdoctor left no trace in the namespace; no
// healthy scenario's report holds an error (healthy_test.go).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

var update = flag.Bool("update", false, "rewrite the golden reports under testdata/")

// binary is the meshdoctor under test: $MESHDOCTOR_BIN (make test sets it), else built here.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	path, cleanup, err := testbed.BuildMeshdoctor()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", "e2e", err)
		os.Exit(2)
	}
	binary = path
	code := m.Run()
	cleanup()
	os.Exit(code)
}

type scenario struct {
	name string
	// opts shape the pod namespace (dual stack by default, like testbed.NewNetns).
	opts []testbed.Option
	// env and args are what istio-init gets; nil args means no istio-init ran at all.
	env  []string
	args []string
	// annotations are the pod's, given to meshdoctor with --annotations.
	annotations map[string]string
	// breakIt damages the rules after istio-init, as something on a node would.
	breakIt func(ctx context.Context, n *testbed.Netns) error
	verdict nodecheck.Verdict
	codes   []nodecheck.Code
}

func with(extra ...string) []string { return append(testbed.DefaultSidecarArgs(), extra...) }

func scenarios() []scenario {
	custom := []string{
		"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
		"-i", "10.0.0.0/8,172.16.0.0/12", "-x", "10.96.0.1/32", "-b", "8080,9090",
		"-d", "15090,15021,15020", "-q", "3306", "-o", "5432",
	}
	customAnnotations := map[string]string{
		"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8,172.16.0.0/12",
		"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.1/32",
		"traffic.sidecar.istio.io/includeInboundPorts":     "8080,9090",
		"traffic.sidecar.istio.io/includeOutboundPorts":    "3306",
		"traffic.sidecar.istio.io/excludeOutboundPorts":    "5432",
	}
	otherAnnotations := map[string]string{}
	for k, v := range customAnnotations {
		otherAnnotations[k] = v
	}
	otherAnnotations["traffic.sidecar.istio.io/includeInboundPorts"] = "8080"
	otherAnnotations["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = "10.96.0.0/12"
	dualStack := map[string]string{"proxy.istio.io/config": "proxyMetadata:\n  ISTIO_DUAL_STACK: \"true\"\n"}
	nft, legacy := testbed.Nft, testbed.Legacy

	return []scenario{
		{name: "default-nft", args: with(), verdict: nodecheck.VerdictOK},
		// The node writes nft (--node-backend nft): legacy rules capture, but are worth a warning.
		{name: "default-legacy", args: with("--force-iptables-binary", "legacy"), verdict: nodecheck.VerdictOK,
			codes: []nodecheck.Code{nodecheck.IptablesBackendMismatch}},
		{name: "native-nftables", args: with("--native-nftables"), verdict: nodecheck.VerdictOK},
		{name: "tproxy", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
			"-b", "*", "-d", "15090,15021,15020"},
			annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}, verdict: nodecheck.VerdictOK},
		{name: "native-nftables-tproxy", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
			"-b", "*", "-d", "15090,15021,15020", "--native-nftables"},
			annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}, verdict: nodecheck.VerdictOK},
		{name: "native-nftables-tproxy-dual-stack", env: []string{"ISTIO_DUAL_STACK=true"},
			args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
				"-b", "*", "-d", "15090,15021,15020", "--native-nftables"},
			annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY",
				"proxy.istio.io/config": "proxyMetadata:\n  ISTIO_DUAL_STACK: \"true\"\n"}, verdict: nodecheck.VerdictOK},
		{name: "custom-annotations-match", args: custom, annotations: customAnnotations, verdict: nodecheck.VerdictOK},
		{name: "custom-annotations-differ", args: custom, annotations: otherAnnotations,
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.RedirectRulesMismatch}},
		{name: "no-rules", verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}},
		{name: "jump-deleted", args: with(), verdict: nodecheck.VerdictBroken,
			codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete},
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.DeleteRule(ctx, nft, testbed.IPv4, "nat", "OUTPUT", "-j", "ISTIO_OUTPUT")
			}},
		{name: "chain-flushed", args: with(), verdict: nodecheck.VerdictBroken,
			codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete},
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.FlushChain(ctx, nft, testbed.IPv4, "nat", "ISTIO_INBOUND")
			}},
		{name: "wrong-redirect-port", args: with(), verdict: nodecheck.VerdictBroken,
			codes: []nodecheck.Code{nodecheck.RedirectRulesMismatch},
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.RedirectTo(ctx, nft, testbed.IPv4, "ISTIO_IN_REDIRECT", 15007)
			}},
		{name: "split-backends", args: with(), verdict: nodecheck.VerdictBroken,
			codes: []nodecheck.Code{nodecheck.IptablesBackendMismatch, nodecheck.RedirectRulesIncomplete},
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				// A second writer put the inbound half into legacy and the nft copy lost it.
				if err := n.IstioIptables(ctx, with("--force-iptables-binary", "legacy")...); err != nil {
					return err
				}
				if err := n.FlushChain(ctx, legacy, testbed.IPv4, "nat", "ISTIO_OUTPUT"); err != nil {
					return err
				}
				return n.DeleteRule(ctx, nft, testbed.IPv4, "nat", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
			}},
		{name: "dual-stack", env: []string{"ISTIO_DUAL_STACK=true"}, args: with(), annotations: dualStack,
			verdict: nodecheck.VerdictOK},
		{name: "dual-stack-ipv6-jump-deleted", env: []string{"ISTIO_DUAL_STACK=true"}, args: with(), annotations: dualStack,
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete},
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.DeleteRule(ctx, nft, testbed.IPv6, "nat", "OUTPUT", "-j", "ISTIO_OUTPUT")
			}},
		{name: "ipv6-only", opts: []testbed.Option{testbed.IPv6Only()}, args: with(), verdict: nodecheck.VerdictOK},
		{name: "dual-stack-written-without-ipv6", args: with(), annotations: dualStack,
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}},
	}
}

// TestCheckScenarios is the end-to-end table: real rules, real breakage, the real binary.
func TestCheckScenarios(t *testing.T) {
	testbed.RequirePrivileged(t)
	testbed.PilotAgent(t)
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			n := testbed.NewNetns(t, sc.opts...)
			if sc.args != nil {
				if err := n.IstioIptablesEnv(ctx, sc.env, sc.args...); err != nil {
					t.Fatalf("istio-init: %v", err)
				}
			}
			if sc.breakIt != nil {
				if err := sc.breakIt(ctx, n); err != nil {
					t.Fatalf("breaking the rules: %v", err)
				}
			}
			before, err := n.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}

			rep, code, stderr := runCheck(t, ctx, sc.annotations, n.Path())

			after, err := n.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(after); d != "" {
				t.Errorf("meshdoctor left a trace in the pod's namespace:\n%s", d)
			}
			if len(rep.Pods) != 1 {
				t.Fatalf("report has %d pods, want 1\n%s", len(rep.Pods), stderr)
			}
			pod := rep.Pods[0]
			if pod.Verdict != sc.verdict {
				t.Errorf("verdict %s, want %s; findings: %+v reason: %s", pod.Verdict, sc.verdict, pod.Findings, pod.Reason)
			}
			var codes []nodecheck.Code
			for _, f := range pod.Findings {
				codes = append(codes, f.Code)
				if f.Message == "" || f.Remedy == "" || len(f.Evidence) == 0 {
					t.Errorf("finding %s lacks a message, remedy or evidence: %+v", f.Code, f)
				}
			}
			slices.Sort(codes)
			want := slices.Clone(sc.codes)
			slices.Sort(want)
			if !slices.Equal(codes, want) {
				t.Errorf("codes %v, want %v\nfindings: %s", codes, want, mustJSON(pod.Findings))
			}
			wantExit := 0
			if sc.verdict == nodecheck.VerdictBroken {
				wantExit = 1
			}
			if code != wantExit {
				t.Errorf("exit status %d, want %d; stderr: %s", code, wantExit, stderr)
			}

			// Istio's own validation proves one path (see testbed.Validate). Where it says capture
			// is broken, meshdoctor must say so too.
			ok, out, err := n.ValidateWith(ctx, "--probe-timeout=1s")
			if err != nil {
				t.Fatalf("Istio validation: %v\n%s", err, out)
			}
			if !ok && pod.Verdict != nodecheck.VerdictBroken {
				t.Errorf("Istio's validation fails but meshdoctor says %s", pod.Verdict)
			}
			t.Logf("Istio validation passes: %v; meshdoctor: %s %v", ok, pod.Verdict, codes)

			golden(t, sc.name, rep)
		})
	}
}

// A namespace that vanished (the pod was deleted) is unknown with a reason, and the others are
// still checked.
func TestCheckVanishedNetns(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := testbed.NewNetns(t)
	if err := n.IstioIptables(ctx, with()...); err != nil {
		t.Fatal(err)
	}
	rep, code, stderr := runCheck(t, ctx, nil, "/var/run/netns/md-gone-for-good", n.Path())
	if len(rep.Pods) != 2 {
		t.Fatalf("want 2 pods in the report, got %d; stderr %s", len(rep.Pods), stderr)
	}
	if rep.Pods[0].Verdict != nodecheck.VerdictUnknown || rep.Pods[0].Reason == "" {
		t.Errorf("vanished netns: verdict %s reason %q, want unknown with a reason", rep.Pods[0].Verdict, rep.Pods[0].Reason)
	}
	if rep.Pods[1].Verdict != nodecheck.VerdictOK {
		t.Errorf("healthy netns next to a vanished one: %s", rep.Pods[1].Verdict)
	}
	if code != 0 {
		t.Errorf("exit status %d, want 0 (one target could be checked and is fine)", code)
	}
}

func TestCheckBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"traffic.sidecar.istio.io/includeInboundPorts": 8080`), 0o600); err != nil {
		t.Fatal(err)
	}
	badPort := filepath.Join(dir, "badport.json")
	if err := os.WriteFile(badPort, []byte(`{"traffic.sidecar.istio.io/includeInboundPorts": "80x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"check", "--netns", "/x", "--annotations", bad},
		{"check", "--netns", "/x", "--annotations", badPort},
		{"check", "--netns", "/x", "-o", "yaml"},
		{"check", "--no-such-flag"},
	} {
		cmd := exec.Command(binary, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: want exit status 2, got %v", args, err)
		}
		if stderr.Len() == 0 {
			t.Errorf("%v: no error message", args)
		}
	}
}

func runCheck(t *testing.T, ctx context.Context, annotations map[string]string, netns ...string) (nodecheck.Report, int, string) {
	t.Helper()
	// The node-level checks read the host's CNI config, logs and journal under --host-root: point
	// it at nothing, so the reports depend on the namespaces under test alone.
	args := []string{"--host-root", "/nonexistent-meshdoctor-e2e-host"}
	if annotations != nil {
		f := filepath.Join(t.TempDir(), "annotations.json")
		if err := os.WriteFile(f, []byte(mustJSON(annotations)), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--annotations", f)
	}
	for _, p := range netns {
		args = append(args, "--netns", p)
	}
	return runMeshdoctor(t, ctx, args...)
}

// runMeshdoctor runs `meshdoctor check -o json --node-name test-node --node-backend nft` with
// args and returns its report, exit code and stderr.
func runMeshdoctor(t *testing.T, ctx context.Context, args ...string) (nodecheck.Report, int, string) {
	t.Helper()
	args = append([]string{"check", "-o", "json", "--node-name", "test-node", "--node-backend", "nft"}, args...)
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running meshdoctor: %v", err)
	}
	var rep nodecheck.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("meshdoctor printed no JSON report (exit %d): %v\nstdout: %s\nstderr: %s", code, err, stdout.String(), stderr.String())
	}
	return rep, code, stderr.String()
}

// golden compares the report with testdata/NAME.json after replacing what differs between runs
// (the random netns name, check durations).
func golden(t *testing.T, name string, rep nodecheck.Report) {
	t.Helper()
	for i := range rep.Pods {
		rep.Pods[i].Netns = "NETNS"
		for j := range rep.Pods[i].Checks {
			rep.Pods[i].Checks[j].Duration = 0
		}
	}
	got := []byte(mustJSON(rep) + "\n")
	got = regexp.MustCompile(`md-[0-9a-f]{6,}`).ReplaceAll(got, []byte("NETNS"))
	path := filepath.Join("testdata", name+".json")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no golden report (run go test ./test/e2e -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("report differs from %s (go test ./test/e2e -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func mustJSON(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return string(b)
}
