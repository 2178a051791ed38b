package capture_test

import (
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// A real pod namespace whose rules pilot-agent wrote: judged as the pod's own when the runtime's
// pod IP is on its interface, and as another's (NetnsNotPods, no rule judged) when it is not,
// for a sidecar and for an ambient pod.
func TestNetnsOwnsThePod(t *testing.T) {
	ctx := t.Context()
	ns := testbed.NewNetns(t, testbed.IPv4Only())
	if err := ns.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	own := ns.IPv4.Addr().String()
	sidecar := map[string]string{istiopod.AnnotationSidecarStatus: "{}"}
	ambient := map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}
	cases := []struct {
		name        string
		ip          string
		annotations map[string]string
		want        []nodecheck.Code
	}{
		{"sidecar, the pod's IP", own, sidecar, nil},
		{"sidecar, no runtime IP (bare netns)", "", sidecar, nil},
		{"sidecar, another pod's IP", "10.244.250.250", sidecar, []nodecheck.Code{nodecheck.NetnsNotPods}},
		{"ambient, another pod's IP", "fd00:10:244::99", ambient, []nodecheck.Code{nodecheck.NetnsNotPods}},
	}
	chk := &capture.Check{Reader: nsread.Reader{}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := chk.Check(ctx, nodecheck.Target{Namespace: "shop", Name: "cart", Netns: ns.Path(), IP: c.ip, Annotations: c.annotations})
			if err != nil {
				t.Fatal(err)
			}
			var codes []nodecheck.Code
			for _, f := range res.Findings {
				codes = append(codes, f.Code)
			}
			if len(codes) != len(c.want) || (len(c.want) > 0 && codes[0] != c.want[0]) {
				t.Fatalf("codes %v, want %v: %+v", codes, c.want, res.Findings)
			}
			if len(c.want) > 0 {
				ev := res.Findings[0].Evidence
				if ev["podIP"] != c.ip || len(ev["netnsAddresses"].([]string)) == 0 || res.Capture.VerifiedBy != "" {
					t.Errorf("evidence %v, verifiedBy %q", ev, res.Capture.VerifiedBy)
				}
			}
		})
	}
	if _, err := chk.Check(ctx, nodecheck.Target{Netns: ns.Path(), IP: "10.244.x.1", Annotations: sidecar}); err == nil {
		t.Error("a runtime IP that is not an address was taken")
	}
}
