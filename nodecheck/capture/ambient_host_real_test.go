package capture_test

import (
	"context"
	"net/netip"
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
// netns in front whose side istio-cni's code wrote (ambient-inpod --host: in iptables mode the
// probe ipsets and the SNAT of kubelet's probes in nat ISTIO_POSTRT, in native nftables mode the
// table inet istio-ambient-nat with its sets and postrouting SNAT): healthy when the set holds the
// pod; AmbientProbeSetMissingPod when it does not; AmbientHostRulesMissing when the host rule is
// flushed or the native table deleted; when the node side was never written, the findings of the
// form the pod's in-pod rules are in; with both forms on the node, healthy when one covers the
// pod and not judged when neither does. A pod with a secondary interface (multus's net1) is judged
// by its runtime IPs: healthy when the set holds its own IP and not net1's, AmbientProbeSetMissingPod
// when it holds net1's and not the pod's; without a runtime IP (a bare --netns) it is healthy when
// the set holds any of the namespace's addresses of the family. The node's netns is not changed.
func TestAmbientNodeSide(t *testing.T) {
	testbed.RequirePrivileged(t)
	writer := testbed.AmbientInpod(t)
	const (
		iptables = "iptables"
		nftables = "nftables"
	)
	type hostSide struct {
		form  string // the form istio-cni writes: iptables or nftables
		inSet bool   // with the pod's address in the set
		net1  bool   // with net1's address in the set
	}
	net1 := netip.MustParsePrefix("192.168.77.5/24")
	cases := []struct {
		name      string
		native    bool       // the pod's in-pod rules are native nftables
		host      []hostSide // the node sides written, in order
		net1      bool       // the pod has a secondary interface net1 with the address net1
		bare      bool       // the target has no runtime IP (a bare --netns)
		after     [][]string // then these commands in the node's netns (nft … or iptables …)
		codes     []nodecheck.Code
		form      string // the form judged
		notJudged string
	}{
		{name: "iptables healthy", host: []hostSide{{form: iptables, inSet: true}}, form: iptables},
		{name: "iptables: the probe set lost the pod", host: []hostSide{{form: iptables, inSet: false}}, form: iptables,
			codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod}},
		{name: "iptables: the host rule flushed", host: []hostSide{{form: iptables, inSet: true}}, form: iptables,
			after: [][]string{{"iptables", "-t", "nat", "-F", ambienthost.HostChain}},
			codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing}},
		{name: "iptables: the node side never written", form: iptables,
			codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing, nodecheck.AmbientProbeSetMissingPod}},
		{name: "nftables healthy", native: true, host: []hostSide{{form: nftables, inSet: true}}, form: nftables},
		{name: "nftables: the probe set lost the pod", native: true, host: []hostSide{{form: nftables, inSet: false}}, form: nftables,
			codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod}},
		{name: "nftables: the postrouting chain flushed", native: true, host: []hostSide{{form: nftables, inSet: true}}, form: nftables,
			after: [][]string{{"nft", "flush", "chain", "inet", "istio-ambient-nat", "postrouting"}},
			codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing}},
		{name: "nftables: the host table deleted", native: true, host: []hostSide{{form: nftables, inSet: true}}, form: nftables,
			after: [][]string{{"nft", "delete", "table", "inet", "istio-ambient-nat"}},
			codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing}},
		{name: "nftables: the node side never written", native: true, form: nftables,
			codes: []nodecheck.Code{nodecheck.AmbientHostRulesMissing}},
		// The node's form wins over the pod's: an agent switched to native nftables rewrote its
		// host side, and pods enrolled before keep iptables in-pod rules that still let probes in.
		{name: "iptables pod on an nftables node", host: []hostSide{{form: nftables, inSet: true}}, form: nftables},
		{name: "both forms, the nftables one holds the pod", native: true, host: []hostSide{{form: iptables, inSet: false}, {form: nftables, inSet: true}}},
		{name: "both forms, neither holds the pod", native: true, host: []hostSide{{form: iptables, inSet: false}, {form: nftables, inSet: false}},
			notJudged: "both forms"},
		{name: "iptables healthy, with a multus net1", net1: true, host: []hostSide{{form: iptables, inSet: true}}, form: iptables},
		{name: "nftables healthy, with a multus net1", native: true, net1: true, host: []hostSide{{form: nftables, inSet: true}}, form: nftables},
		{name: "iptables: the set holds net1's address, not the pod's", net1: true, host: []hostSide{{form: iptables, net1: true}}, form: iptables,
			codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod}},
		{name: "bare netns with net1: the set holds eth0's address", bare: true, net1: true, host: []hostSide{{form: iptables, inSet: true}}, form: iptables},
		{name: "bare netns with net1: the set holds neither", bare: true, net1: true, host: []hostSide{{form: iptables}}, form: iptables,
			codes: []nodecheck.Code{nodecheck.AmbientProbeSetMissingPod}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			pod := testbed.NewNetns(t, testbed.IPv4Only())
			node := pod.NodeInFront(t)
			if c.net1 {
				pod.AddInterface(t, "net1", net1)
			}
			var args []string
			if c.native {
				args = append(args, "--native-nftables")
			}
			must(t, pod.AmbientRules(ctx, writer, args...))
			testbed.ZtunnelStandIn(t, pod.Path())
			for _, h := range c.host {
				var probeIPs []string
				if h.inSet {
					probeIPs = append(probeIPs, pod.IPv4.Addr().String())
				}
				if h.net1 {
					probeIPs = append(probeIPs, net1.Addr().String())
				}
				hostArgs := []string{"--host", "--probe-ips", strings.Join(probeIPs, ",")}
				if h.form == nftables {
					hostArgs = append(hostArgs, "--native-nftables")
				}
				must(t, testbed.WriteAmbientRules(ctx, writer, node.Path(), hostArgs...))
			}
			for _, cmd := range c.after {
				switch cmd[0] {
				case "nft":
					_, err := node.Nft(ctx, cmd[1:]...)
					must(t, err)
				case "iptables":
					must(t, node.Iptables(ctx, testbed.Nft, testbed.IPv4, cmd[1:]...))
				}
			}
			target := nodecheck.Target{Netns: pod.Path(), IP: pod.IPv4.Addr().String(), IPs: []string{pod.IPv4.Addr().String()},
				Annotations: map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}}
			if c.bare {
				target.IP, target.IPs = "", nil
			}
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
				if slices.Contains(c.codes, f.Code) && f.Evidence["form"] != c.form {
					t.Errorf("%s names form %v, want %s: %+v", f.Code, f.Evidence["form"], c.form, f.Evidence)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, c.codes) {
				t.Errorf("findings %v, want %v: %+v", got, c.codes, res.Findings)
			}
			d, _ := res.Detail.(capture.Detail)
			if d.Host == nil || !strings.Contains(d.Host.NotJudged, c.notJudged) || (c.notJudged == "") != (d.Host.NotJudged == "") {
				t.Fatalf("node side %+v, want not judged %q", d.Host, c.notJudged)
			}
			t.Logf("node side: form %q (%s); %+v", d.Host.Form, d.Host.Why, *d.Host.State)
			if d.Host.Form != c.form {
				t.Errorf("judged form %q (%s), want %q", d.Host.Form, d.Host.Why, c.form)
			}
		})
	}
}
