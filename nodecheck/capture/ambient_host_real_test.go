package capture_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// An ambient pod enrolled by Istio's own code, ztunnel's stand-in behind its rules, and a node
// netns in front whose side istio-cni's code wrote (ambient-inpod --host: the probe ipsets and the
// SNAT of kubelet's probes): healthy when the set holds the pod; AmbientProbeSetMissingPod when it
// does not; AmbientHostRulesMissing when the host rule is flushed; both when the node side was
// never written; a native nftables pod's node side is not judged. The node's netns is not changed.
func TestAmbientNodeSide(t *testing.T) {
	testbed.RequirePrivileged(t)
	writer := testbed.AmbientInpod(t)
	cases := []struct {
		name      string
		native    bool
		host      bool // write the node side
		inSet     bool // with the pod's address in the set
		flush     bool // then flush the host rule's chain
		codes     []nodecheck.Code
		notJudged string
	}{
		{name: "healthy", host: true, inSet: true},
		{name: "the probe set lost the pod", host: true, codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod}},
		{name: "the host rule flushed", host: true, inSet: true, flush: true, codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing}},
		{name: "the node side never written", codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing, nodecheck.AmbientProbeSetMissingPod}},
		{name: "native nftables", native: true, notJudged: "native nftables"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			pod := testbed.NewNetns(t, testbed.IPv4Only())
			node := pod.NodeInFront(t)
			var args []string
			if c.native {
				args = append(args, "--native-nftables")
			}
			must(t, pod.AmbientRules(ctx, writer, args...))
			testbed.ZtunnelStandIn(t, pod.Path())
			if c.host {
				ips := ""
				if c.inSet {
					ips = pod.IPv4.Addr().String()
				}
				must(t, testbed.WriteAmbientRules(ctx, writer, node.Path(), append(args, "--host", "--probe-ips", ips)...))
			}
			if c.flush {
				must(t, node.Iptables(ctx, testbed.Nft, testbed.IPv4, "-t", "nat", "-F", ambienthost.HostChain))
			}
			target := nodecheck.Target{Netns: pod.Path(), IP: pod.IPv4.Addr().String(),
				Annotations: map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}}
			chk := &capture.Check{Reader: nsread.Reader{},
				AmbientHost: &ambienthost.Cached{Reader: ambienthost.Reader{NodeNetns: node.Path(), Rules: nsread.Reader{}}, TTL: time.Second}}
			var res nodecheck.Result
			node.Unchanged(ctx, t, "the check, in the node's netns", func() {
				var err error
				if res, err = chk.Check(ctx, target); err != nil {
					t.Fatal(err)
				}
			})
			var got []nodecheck.Code
			for _, f := range res.Findings {
				got = append(got, f.Code)
				if slices.Contains(c.codes, f.Code) && (f.Severity != nodecheck.SeverityError || f.Component != nodecheck.ComponentIstioCNI || f.Remedy == "") {
					t.Errorf("%s lacks its severity, component or remedy: %+v", f.Code, f)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, c.codes) {
				t.Errorf("findings %v, want %v: %+v", got, c.codes, res.Findings)
			}
			d, _ := res.Detail.(capture.Detail)
			if d.Host == nil || !strings.Contains(d.Host.NotJudged, c.notJudged) || (c.notJudged == "") != (d.Host.NotJudged == "") {
				t.Errorf("node side %+v, want not judged %q", d.Host, c.notJudged)
			}
		})
	}
}
