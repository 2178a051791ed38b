package capture_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// Ambient pods on the real test bed: Istio's own istio-cni code writes the in-pod rules
// (test/tools/ambient-inpod), meshdoctor's real reader reads them, and the ambient expected rule
// set must match them exactly, for each configuration the pod's annotations select, and must
// name what is wrong once the rules are damaged the way a node damages them.
func TestAmbientRulesFromIstiosWriter(t *testing.T) {
	writer := testbed.AmbientInpod(t)
	enrolled := map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range enrolled {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	cases := []struct {
		name        string
		opts        []testbed.Option
		args        []string // nil: the writer never ran
		annotations map[string]string
		breakIt     func(ctx context.Context, n *testbed.Netns) error
		// Once the writer ran, a stand-in ztunnel listens in the pod, less the sockets in
		// ztunnelWithout, unless noZtunnel (ztunnel lost the pod).
		noZtunnel      bool
		ztunnelWithout []string
		codes          []nodecheck.Code
		contains       string
		missing        []string // CaptureTargetNotListening's evidence
	}{
		{name: "default dual-stack", args: []string{}, annotations: enrolled},
		{name: "ipv4-only pod, ipv6 rules written anyway", opts: []testbed.Option{testbed.IPv4Only()}, args: []string{}, annotations: enrolled},
		{name: "dns capture off globally, pod silent", args: []string{"--dns=false"}, annotations: enrolled, ztunnelWithout: dnsSockets},
		{name: "dns capture off for the pod", args: []string{"--dns=false"}, ztunnelWithout: dnsSockets,
			annotations: with(map[string]string{istiopod.AnnotationAmbientDNSCapture: "false"})},
		{name: "ingress mode", args: []string{"--ingress"},
			annotations: with(map[string]string{istiopod.AnnotationAmbientBypassInbound: "true"})},
		{name: "ingress mode, ztunnel without inbound sockets", args: []string{"--ingress"},
			ztunnelWithout: []string{"tcp/15006", "tcp/15008"},
			annotations:    with(map[string]string{istiopod.AnnotationAmbientBypassInbound: "true"})},
		{name: "rules verify, ztunnel lost the pod", args: []string{}, annotations: enrolled, noZtunnel: true,
			codes: []nodecheck.Code{nodecheck.CaptureTargetNotListening}, contains: "ghost enrollment",
			missing: testbed.ZtunnelSockets},
		{name: "dns capture on for the pod, nothing on 15053", args: []string{}, ztunnelWithout: dnsSockets,
			annotations: with(map[string]string{istiopod.AnnotationAmbientDNSCapture: "true"}),
			codes:       []nodecheck.Code{nodecheck.CaptureTargetNotListening}, contains: "tcp/15053, udp/15053",
			missing: dnsSockets},
		{name: "pod silent on dns, dns rules written, nothing on 15053", args: []string{}, annotations: enrolled,
			ztunnelWithout: []string{"udp/15053"},
			codes:          []nodecheck.Code{nodecheck.CaptureTargetNotListening}, contains: "nothing listens on udp/15053 "},
		{name: "inbound plaintext listener gone", args: []string{}, annotations: enrolled, ztunnelWithout: []string{"tcp/15006"},
			codes: []nodecheck.Code{nodecheck.CaptureTargetNotListening}, contains: "nothing listens on tcp/15006 "},
		{name: "virtual interfaces", args: []string{"--virtual-interfaces=eth0peer"},
			annotations: with(map[string]string{istiopod.AnnotationRerouteInterfaces: "eth0peer"})},
		{name: "never written", annotations: enrolled,
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}, contains: "istio-cni node agent"},
		{name: "label enrolment, never written", annotations: nil,
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}},
		{name: "outbound chain flushed, ztunnel gone too", args: []string{}, annotations: enrolled, noZtunnel: true,
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.FlushChain(ctx, testbed.Nft, testbed.IPv4, "nat", "ISTIO_OUTPUT")
			},
			codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete}, contains: "nat/ISTIO_OUTPUT"},
		{name: "policy routing removed", args: []string{}, annotations: enrolled,
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				_, err := n.Exec(ctx, "ip", "rule", "del", "fwmark", "0x111/0xfff", "lookup", "100")
				return err
			},
			codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete}, contains: "fwmark 0x111/0xfff"},
		{name: "rules verify, ztunnel listens, another owner's nft table untracks TCP", args: []string{}, annotations: enrolled,
			breakIt: nftScript("table inet other {\n chain out {\n  type filter hook output priority raw\n  meta l4proto tcp notrack\n }\n}"),
			codes:   []nodecheck.Code{nodecheck.CaptureBypassed, nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		{name: "rules verify, ztunnel listens, the legacy backend untracks IPv4 TCP", args: []string{}, annotations: enrolled,
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.Iptables(ctx, testbed.Legacy, testbed.IPv4, "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "NOTRACK")
			},
			codes: []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		{name: "written for ingress mode, pod not in it", args: []string{"--ingress"}, annotations: enrolled,
			codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete}, contains: "ISTIO_PRERT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			n := testbed.NewNetns(t, c.opts...)
			if c.args != nil {
				if err := n.AmbientRules(ctx, writer, c.args...); err != nil {
					t.Fatal(err)
				}
			}
			if c.breakIt != nil {
				if err := c.breakIt(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			if c.args != nil && !c.noZtunnel {
				testbed.ZtunnelStandIn(t, n.Path(), c.ztunnelWithout...)
			}
			target := nodecheck.Target{Netns: n.Path(), Annotations: c.annotations}
			if c.annotations == nil {
				target.Labels = map[string]string{istiopod.LabelDataplaneMode: "ambient"}
			}
			var res nodecheck.Result
			n.Unchanged(ctx, t, "the check", func() {
				var err error
				res, err = (&capture.Check{Reader: nsread.Reader{}, Traffic: canary.Prober{}}).Check(ctx, target)
				if err != nil {
					t.Fatal(err)
				}
			})
			if res.Capture == nil || res.Capture.Mode != "ambient" {
				t.Fatalf("capture %+v, want mode ambient", res.Capture)
			}
			var got []nodecheck.Code
			var text strings.Builder
			for _, f := range res.Findings {
				got = append(got, f.Code)
				text.WriteString(f.Message + " " + f.Remedy + "\n")
				checkAmbientComponent(t, f)
				if f.Code == nodecheck.CaptureTargetNotListening && c.missing != nil {
					if got := f.Evidence["missing"].([]string); !slices.Equal(got, c.missing) {
						t.Errorf("missing %v, want %v", got, c.missing)
					}
				}
			}
			if !equalCodes(got, c.codes) {
				t.Fatalf("findings %v, want %v:\n%s\nraw rules: %+v", got, c.codes, text.String(), res.Detail)
			}
			if c.contains != "" && !strings.Contains(text.String(), c.contains) {
				t.Errorf("findings do not mention %q:\n%s", c.contains, text.String())
			}
			if len(c.codes) == 0 && res.Capture.Backend != "nft" {
				t.Errorf("backend %s, want nft", res.Capture.Backend)
			}
			checkVerifiedByTraffic(t, res)
		})
	}
}

// dnsSockets are ztunnel's DNS sockets, absent where DNS is not captured.
var dnsSockets = []string{"tcp/15053", "udp/15053"}

// checkAmbientComponent: istio-cni wrote the rules, ztunnel holds the sockets behind them.
func checkAmbientComponent(t *testing.T, f nodecheck.Finding) {
	t.Helper()
	want := nodecheck.ComponentIstioCNI
	switch f.Code {
	case nodecheck.CaptureTargetNotListening:
		want = nodecheck.ComponentZtunnel
	case nodecheck.CaptureBypassed, nodecheck.CaptureExclusionIgnored:
		want = "" // something that is not Istio's acts first
	}
	if f.Component != want {
		t.Errorf("finding %s points at %q, want %q", f.Code, f.Component, want)
	}
}

func equalCodes(a, b []nodecheck.Code) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkVerifiedByTraffic: a real pod whose rules verify, with its proxy (or ztunnel's stand-in)
// listening, is proven by the traffic canary too; one with an error is not.
func checkVerifiedByTraffic(t *testing.T, res nodecheck.Result) {
	t.Helper()
	broken := slices.ContainsFunc(res.Findings, func(f nodecheck.Finding) bool { return f.Severity == nodecheck.SeverityError })
	if byTraffic := res.Capture.VerifiedBy == nodecheck.VerifiedByTraffic; byTraffic == broken {
		t.Errorf("verified by %q with errors %v; traffic: %+v", res.Capture.VerifiedBy, broken, trafficOf(res))
	}
}

func trafficOf(res nodecheck.Result) any {
	if d, ok := res.Detail.(capture.Detail); ok && d.Traffic != nil {
		return *d.Traffic
	}
	return nil
}

func nftScript(script string) func(ctx context.Context, n *testbed.Netns) error {
	return func(ctx context.Context, n *testbed.Netns) error { return n.NftScript(ctx, script) }
}
