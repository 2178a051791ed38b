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

// Sidecar pods on the real test bed, rules written by Istio's own pilot-agent from istio-init's
// args (given to the check as the runtime gives them), a proxy's stand-in listening on 15001 and
// 15006, the pod wired to a node netns the inbound canary is sent from: the capture is verified
// by rules and traffic, outbound and (REDIRECT) inbound, in every backend; a rule that is not
// Istio's and defeats it either way is CaptureBypassed while every Istio rule reads right; one
// that captures what the intent excludes is CaptureExclusionIgnored.
func TestSidecarCaptureProvenByTraffic(t *testing.T) {
	testbed.RequirePrivileged(t)
	sidecar := testbed.DefaultSidecarArgs()
	tproxy := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m", "TPROXY", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}
	cases := []struct {
		name     string
		opts     []testbed.Option
		args     []string
		defeat   string // an nftables script of another owner
		legacy   []string
		codes    []nodecheck.Code
		contains string
		// inbound is what the inbound canary must show: "captured", or text of why it was not proven.
		inbound string
	}{
		{name: "iptables-nft", args: sidecar, inbound: "captured"},
		{name: "iptables-legacy", args: append(slices.Clone(sidecar), "--force-iptables-binary", "legacy"), inbound: "captured"},
		{name: "native nftables", args: append(slices.Clone(sidecar), "--native-nftables"), inbound: "captured"},
		{name: "tproxy", args: tproxy, inbound: "TPROXY captures inbound without rewriting"},
		{name: "dual-stack", args: append(slices.Clone(sidecar), "--dual-stack"), inbound: "captured"},
		{name: "ipv6-only", opts: []testbed.Option{testbed.IPv6Only()}, args: sidecar, inbound: "captured"},
		{name: "only 10.0.0.0/8 captured", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "10.0.0.0/8", "-x", "", "-b", "*", "-d", "15020"}, inbound: "captured"},
		{name: "an excluded outbound port", args: append(slices.Clone(sidecar), "-o", "5432"), inbound: "captured"},
		{name: "only inbound port 9080 captured", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "9080", "-d", ""}, inbound: "captured"},
		{name: "inbound not captured", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "", "-d", ""}},
		{name: "another owner untracks inbound TCP", args: sidecar,
			defeat: "table inet other {\n chain pre {\n  type filter hook prerouting priority raw\n  meta l4proto tcp notrack\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by the pod's conntrack"},
		{name: "native nftables, another owner's nat prerouting first", args: append(slices.Clone(sidecar), "--native-nftables"),
			defeat: "table ip other {\n chain pre {\n  type nat hook prerouting priority -110\n  tcp dport 80 redirect to :15999\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "from the node to"},
		{name: "the other backend untracks inbound TCP", args: sidecar,
			legacy: []string{"-t", "raw", "-A", "PREROUTING", "-p", "tcp", "-j", "NOTRACK"},
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by the pod's conntrack"},
		{name: "another owner's table untracks TCP", args: sidecar,
			defeat: "table inet other {\n chain out {\n  type filter hook output priority raw\n  meta l4proto tcp notrack\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		{name: "the other backend untracks TCP", args: sidecar,
			legacy: []string{"-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "NOTRACK"},
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		// The same defeat under each of Istio's other writers: the canary judges the packet, not
		// the backend or the mode that wrote the rules.
		{name: "iptables-legacy, another owner's nft table untracks TCP", args: append(slices.Clone(sidecar), "--force-iptables-binary", "legacy"),
			defeat: "table inet other {\n chain out {\n  type filter hook output priority raw\n  meta l4proto tcp notrack\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		{name: "tproxy, another owner's nft table untracks TCP", args: tproxy,
			defeat: "table inet other {\n chain out {\n  type filter hook output priority raw\n  meta l4proto tcp notrack\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		{name: "native nftables, the legacy backend untracks TCP", args: append(slices.Clone(sidecar), "--native-nftables"),
			legacy: []string{"-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "NOTRACK"},
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "not tracked by conntrack"},
		{name: "native nftables, another owner's nat chain first", args: append(slices.Clone(sidecar), "--native-nftables"),
			defeat: "table ip other {\n chain out {\n  type nat hook output priority -110\n  tcp dport 80 dnat to 192.0.2.1\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "was not redirected"},
		{name: "another owner redirects elsewhere", args: sidecar,
			defeat: "table ip other {\n chain out {\n  type nat hook output priority -110\n  tcp dport 80 redirect to :15999\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureBypassed}, contains: "127.0.0.1:15999 instead"},
		{name: "another owner sends the proxy's own traffic back to it", args: sidecar,
			defeat: "table ip other {\n chain out {\n  type nat hook output priority -110\n  meta skuid 1337 tcp dport 80 redirect to :15001\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureExclusionIgnored}, contains: "uid 1337"},
		{name: "another owner captures an excluded port", args: append(slices.Clone(sidecar), "-o", "5432"),
			defeat: "table ip other {\n chain out {\n  type nat hook output priority -110\n  tcp dport 5432 redirect to :15001\n }\n}",
			codes:  []nodecheck.Code{nodecheck.CaptureExclusionIgnored}, contains: "port 5432"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			n := testbed.NewNetns(t, c.opts...)
			if err := n.IstioIptables(ctx, c.args...); err != nil {
				t.Fatal(err)
			}
			if c.defeat != "" {
				if err := nftScript(c.defeat)(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			if c.legacy != nil {
				if err := n.Iptables(ctx, testbed.Legacy, testbed.IPv4, c.legacy...); err != nil {
					t.Fatal(err)
				}
			}
			node := n.NodeInFront(t)
			proxy := testbed.ListenCounting(t, n.Path(), 15001)
			inboundProxy := testbed.ListenCounting(t, n.Path(), 15006)
			podIP := n.IPv4
			if !podIP.IsValid() {
				podIP = n.IPv6
			}
			target := nodecheck.Target{Namespace: "shop", Name: "cart", Netns: n.Path(), IP: podIP.Addr().String(),
				Annotations: map[string]string{istiopod.AnnotationSidecarStatus: "{}"},
				Containers: []nodecheck.Container{{Name: "istio-init", Role: nodecheck.RoleInit, State: nodecheck.ContainerExited,
					Args: append([]string{"istio-iptables"}, c.args...), UID: 0, GID: 0}}}
			var res nodecheck.Result
			n.Unchanged(ctx, t, "the check", func() {
				node.Unchanged(ctx, t, "the check, in the node's netns", func() {
					var err error
					res, err = (&capture.Check{Reader: nsread.Reader{}, Traffic: canary.Prober{}, NodeNetns: node.Path()}).Check(ctx, target)
					if err != nil {
						t.Fatal(err)
					}
				})
			})
			if a := proxy.Accepted() + inboundProxy.Accepted(); a != 0 {
				t.Errorf("the proxy's stand-ins accepted %d connections", a)
			}
			var got []nodecheck.Code
			var text strings.Builder
			for _, f := range res.Findings {
				if f.Severity == nodecheck.SeverityError {
					got = append(got, f.Code)
				}
				text.WriteString(f.Message + " " + strings.Join(evidenceStrings(f), " ") + "\n")
			}
			if !slices.Equal(got, c.codes) {
				t.Fatalf("errors %v, want %v:\n%s\ntraffic: %+v", got, c.codes, text.String(), trafficOf(res))
			}
			if c.contains != "" && !strings.Contains(text.String(), c.contains) {
				t.Errorf("findings do not mention %q:\n%s", c.contains, text.String())
			}
			checkVerifiedByTraffic(t, res)
			if c.codes == nil {
				if got := inboundOf(res); !strings.Contains(got, c.inbound) || (c.inbound == "" && got != "") {
					t.Errorf("inbound canary: %q, want %q; traffic: %+v", got, c.inbound, trafficOf(res))
				}
			}
		})
	}
}

// inboundOf is "captured" when an inbound canary was, else why inbound was not proven.
func inboundOf(res nodecheck.Result) string {
	d, ok := res.Detail.(capture.Detail)
	if !ok || d.Traffic == nil {
		return ""
	}
	for _, p := range d.Traffic.Probes {
		if p.Outcome.Answer != canary.AnswerNone && p.Result == "captured" {
			return "captured"
		}
	}
	return d.Traffic.InboundNotProven
}

func evidenceStrings(f nodecheck.Finding) []string {
	var out []string
	for k, v := range f.Evidence {
		if s, ok := v.(string); ok {
			out = append(out, k+"="+s)
		}
	}
	return out
}
