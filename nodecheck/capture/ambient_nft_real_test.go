package capture_test

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

var captureAmbientNft = flag.Bool("capture-ambient-nft", false,
	"TestAmbientNftablesFromIstiosWriter also stores what the reader saw under "+ambientNftDir+" (as root)")

// Ambient pods whose in-pod rules istio-cni writes with native nftables, on the real test bed:
// Istio's own code writes the inet istio-ambient-* tables (test/tools/ambient-inpod
// --native-nftables), meshdoctor's real reader reads them, and the check must find a healthy pod
// healthy in every configuration, IPv4-only and dual-stack, name what a damaged one lacks, and
// leave the namespace exactly as it found it.
func TestAmbientNftablesFromIstiosWriter(t *testing.T) {
	writer := testbed.AmbientInpod(t)
	for _, c := range ambientNftCases() {
		t.Run(c.name, func(t *testing.T) {
			if !*captureAmbientNft {
				t.Parallel()
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			n := testbed.NewNetns(t, c.opts...)
			args := append([]string{"--native-nftables"}, c.args...)
			if c.args != nil {
				if err := n.AmbientRules(ctx, writer, args...); err != nil {
					t.Fatal(err)
				}
			}
			if c.breakIt != nil {
				if _, err := n.Exec(ctx, c.breakIt[0], c.breakIt[1:]...); err != nil {
					t.Fatal(err)
				}
			}
			if c.args != nil && !c.noZtunnel {
				testbed.ZtunnelStandIn(t, n.Path(), c.ztunnelWithout...)
			}
			before, err := n.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			reader := &recordingReader{}
			res, err := (&capture.Check{Reader: reader, Traffic: canary.Prober{}}).Check(ctx, nodecheck.Target{Netns: n.Path(), Annotations: c.annotations})
			if err != nil {
				t.Fatal(err)
			}
			after, err := n.Trace(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(after); d != "" {
				t.Errorf("the check changed the namespace:\n%s", d)
			}
			if strings.Contains(before.IPTablesNames+before.IP6TablesNames, "nat") {
				t.Errorf("a legacy table exists in a namespace only nftables wrote to:\n%s%s", before.IPTablesNames, before.IP6TablesNames)
			}
			checkAmbientNftResult(t, c, res)
			checkVerifiedByTraffic(t, res)
			if *captureAmbientNft {
				writerArgs := ""
				if c.args != nil {
					writerArgs = strings.Join(append([]string{testbed.AmbientInpodBinary}, args...), " ")
				}
				storeAmbientNftCase(t, ctx, c, n, reader, writerArgs)
			}
		})
	}
}

// checkAmbientNftResult holds what every run of a case must show, real or replayed.
func checkAmbientNftResult(t *testing.T, c ambientNftCase, res nodecheck.Result) {
	t.Helper()
	if res.Capture == nil || res.Capture.Mode != "ambient" {
		t.Fatalf("capture %+v, want mode ambient", res.Capture)
	}
	var text strings.Builder
	for _, f := range res.Findings {
		text.WriteString(f.Message + " " + f.Remedy + "\n")
		checkAmbientComponent(t, f)
	}
	if got := codesOf(res.Findings); !equalCodes(got, c.codes) {
		t.Fatalf("findings %v, want %v:\n%s", got, c.codes, text.String())
	}
	if c.contains != "" && !strings.Contains(text.String(), c.contains) {
		t.Errorf("findings do not mention %q:\n%s", c.contains, text.String())
	}
	if c.args != nil && res.Capture.Backend != "native-nftables" {
		t.Errorf("backend %s, want native-nftables", res.Capture.Backend)
	}
}

// recordingReader is the real reader, keeping what it read for -capture-ambient-nft.
type recordingReader struct {
	nsread.Reader
	snap storedSnapshot
	err  error
}

func (r *recordingReader) ReadRules(ctx context.Context, netns string) (snapOut rules.Snapshot, err error) {
	snapOut, err = r.Reader.ReadRules(ctx, netns)
	if err == nil {
		r.snap, r.err = storeSnapshot(snapOut, "")
	}
	return snapOut, err
}

func storeAmbientNftCase(t *testing.T, ctx context.Context, c ambientNftCase, n *testbed.Netns, r *recordingReader, writer string) {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	dir := filepath.Join(ambientNftDir, c.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.snap.Writer = writer
	data, err := json.MarshalIndent(r.snap, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"snapshot.json": append(data, '\n')}
	for name, argv := range map[string][]string{
		"nft-list-ruleset.txt": {"nft", "list", "ruleset"},
		"ip-rule.txt": {"sh", "-c", "for f in 4 6; do echo \"# ip -$f rule\"; ip -$f rule; done; " +
			"for f in 4 6; do echo \"# ip -$f route show table 100\"; ip -$f route show table 100 2>&1 || true; done"},
	} {
		out, err := n.Exec(ctx, argv[0], argv[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = out
	}
	if c.breakIt != nil {
		files["broken-by.txt"] = []byte(strings.Join(c.breakIt, " ") + "\n")
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// An ambient pod whose native nftables rules istio-cni wrote and which ztunnel serves, but whose
// TCP another owner untracks, in another nft table or in the legacy backend: every Istio rule
// reads right, and only the canary sees that nothing is captured. (Not in ambientNftCases: those
// are stored as captures of Istio's tables alone.)
func TestAmbientNftablesCaptureBypassed(t *testing.T) {
	writer := testbed.AmbientInpod(t)
	enrolled := map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}
	for _, c := range []struct {
		name    string
		opts    []testbed.Option
		breakIt func(context.Context, *testbed.Netns) error
	}{
		{name: "another owner's nft table untracks TCP", opts: []testbed.Option{testbed.IPv4Only()},
			breakIt: nftScript("table inet other {\n chain out {\n  type filter hook output priority raw\n  meta l4proto tcp notrack\n }\n}")},
		{name: "the legacy backend untracks TCP", opts: []testbed.Option{testbed.IPv4Only()},
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.Iptables(ctx, testbed.Legacy, testbed.IPv4, "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "NOTRACK")
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			n := testbed.NewNetns(t, c.opts...)
			if err := n.AmbientRules(ctx, writer, "--native-nftables"); err != nil {
				t.Fatal(err)
			}
			if err := c.breakIt(ctx, n); err != nil {
				t.Fatal(err)
			}
			testbed.ZtunnelStandIn(t, n.Path())
			var res nodecheck.Result
			n.Unchanged(ctx, t, "the check", func() {
				var err error
				res, err = (&capture.Check{Reader: nsread.Reader{}, Traffic: canary.Prober{}}).Check(ctx, nodecheck.Target{Netns: n.Path(), Annotations: enrolled})
				if err != nil {
					t.Fatal(err)
				}
			})
			checkAmbientNftResult(t, ambientNftCase{name: c.name, args: []string{}, codes: []nodecheck.Code{nodecheck.CaptureBypassed},
				contains: "not tracked by conntrack"}, res)
			checkVerifiedByTraffic(t, res)
		})
	}
}
