package capture_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/proxyready"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// statusStandIn stands in for pilot-agent's status server on 127.0.0.1:15020 inside the pod: it
// answers /healthz/ready with status. (pilot-agent's own readiness is tested in proxyready, with
// the real pilot-agent; here only its answer matters.)
func statusStandIn(t *testing.T, netnsPath string, status int) {
	t.Helper()
	ln := testbed.ListenIn(t, netnsPath, "tcp4", "127.0.0.1:15020")
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// Sidecar pods whose rules verify, with Envoy's listeners (stand-ins) present or not, and the
// proxy ready or not: a ready proxy with nothing behind the redirects is
// CaptureTargetNotListening; a proxy that is not ready is left to the proxy-ready check; a port
// the intent does not capture needs no listener.
func TestSidecarListenersBehindTheRules(t *testing.T) {
	testbed.RequirePrivileged(t)
	sidecar := testbed.DefaultSidecarArgs()
	noInbound := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "", "-d", "15020"}
	noOutbound := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "", "-x", "", "-b", "*", "-d", "15020"}
	cases := []struct {
		name    string
		args    []string
		listen  []int
		dns     bool // pilot-agent's DNS proxy: tcp and udp 127.0.0.1:15053
		status  int  // 0: nothing on 15020
		missing []string
		judged  bool // whether missing listeners were judged
		// rulesOnly: nothing outbound is captured, so no canary can prove it.
		rulesOnly bool
	}{
		{name: "envoy listens, proxy ready", args: sidecar, listen: []int{15001, 15006}, status: 200},
		{name: "nothing listens, proxy ready", args: sidecar, status: 200, missing: []string{"tcp/15001", "tcp/15006"}, judged: true},
		{name: "no inbound listener, proxy ready", args: sidecar, listen: []int{15001}, status: 200, missing: []string{"tcp/15006"}, judged: true},
		{name: "nothing listens, proxy not ready", args: sidecar, status: 503, missing: []string{"tcp/15001", "tcp/15006"}},
		{name: "nothing listens, no status server", args: sidecar, missing: []string{"tcp/15001", "tcp/15006"}},
		{name: "DNS captured, DNS proxy listens", args: append(slices.Clone(sidecar), "--redirect-dns"), listen: []int{15001, 15006}, dns: true, status: 200},
		{name: "DNS captured, no DNS proxy, proxy ready", args: append(slices.Clone(sidecar), "--redirect-dns"), listen: []int{15001, 15006}, status: 200,
			missing: []string{"tcp/15053", "udp/15053"}, judged: true},
		{name: "inbound not captured", args: noInbound, listen: []int{15001}, status: 200},
		{name: "outbound not captured", args: noOutbound, listen: []int{15006}, status: 200, rulesOnly: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			n := testbed.NewNetns(t)
			if err := n.IstioIptables(ctx, c.args...); err != nil {
				t.Fatal(err)
			}
			for _, p := range c.listen {
				testbed.ListenCounting(t, n.Path(), p)
			}
			if c.dns {
				testbed.ListenIn(t, n.Path(), "tcp4", "127.0.0.1:15053")
				testbed.ListenPacketIn(t, n.Path(), "udp4", "127.0.0.1:15053")
			}
			if c.status != 0 {
				statusStandIn(t, n.Path(), c.status)
			}
			target := nodecheck.Target{Namespace: "shop", Name: "cart", Netns: n.Path(),
				Annotations: map[string]string{istiopod.AnnotationSidecarStatus: "{}"},
				Containers: []nodecheck.Container{{Name: "istio-init", Role: nodecheck.RoleInit, State: nodecheck.ContainerExited,
					Args: append([]string{"istio-iptables"}, c.args...), UID: 0, GID: 0}}}
			var res nodecheck.Result
			n.Unchanged(ctx, t, "the check", func() {
				var err error
				chk := &capture.Check{Reader: nsread.Reader{}, Traffic: canary.Prober{},
					Readiness: proxyready.Readiness{Prober: proxyready.NetnsProber{Timeout: time.Second}}}
				res, err = chk.Check(ctx, target)
				if err != nil {
					t.Fatal(err)
				}
			})
			var errs []nodecheck.Finding
			for _, f := range res.Findings {
				if f.Severity == nodecheck.SeverityError {
					errs = append(errs, f)
				}
			}
			proof := res.Detail.(capture.Detail).Listeners
			if proof == nil {
				t.Fatal("no listener proof in the detail")
			}
			if !slices.Equal(proof.Missing, c.missing) {
				t.Errorf("missing %v, want %v (found %v)", proof.Missing, c.missing, proof.Found)
			}
			switch {
			case c.judged:
				if len(errs) != 1 || errs[0].Code != nodecheck.CaptureTargetNotListening {
					t.Fatalf("findings %+v, want one CaptureTargetNotListening", errs)
				}
				for _, m := range c.missing {
					if !strings.Contains(errs[0].Message, m) {
						t.Errorf("the finding does not name %s: %s", m, errs[0].Message)
					}
				}
				if !strings.Contains(errs[0].Message, "answered 200") {
					t.Errorf("the finding does not say the proxy is ready: %s", errs[0].Message)
				}
			case len(c.missing) > 0:
				if len(errs) != 0 {
					t.Fatalf("findings %+v on a proxy that is not ready, want none from capture", errs)
				}
				if proof.NotJudged == "" {
					t.Error("missing listeners left unjudged without saying why")
				}
			default:
				if len(errs) != 0 {
					t.Fatalf("findings %+v on a healthy pod", errs)
				}
				if proof.Readiness != "" {
					t.Errorf("readiness asked although every listener is there: %s", proof.Readiness)
				}
				if !c.rulesOnly {
					checkVerifiedByTraffic(t, res)
				}
			}
		})
	}
}
