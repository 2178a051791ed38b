package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// notReadyStandIn is a stand-in for pilot-agent's status server in a pod namespace: it answers
// /healthz/ready as pilot-agent does while Envoy has no configuration, 503 with an empty body.
// (nodecheck/proxyready's tests run Istio's own pilot-agent; here only the wiring is at stake.)
func notReadyStandIn(t *testing.T, netnsPath string) {
	ln := testbed.ListenIn(t, netnsPath, "tcp4", "127.0.0.1:15020")
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz/ready" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		http.NotFound(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestCheckProxyReady: `check --netns` probes each namespace's proxy; one that answers "not
// ready" is reported and linked with istiod's loss of the API server found in the node's logs,
// one without a proxy is not; the check runs on every target.
func TestCheckProxyReady(t *testing.T) {
	testbed.RequirePrivileged(t)
	root := nodeRoot(t)
	notReady := testbed.NewNetns(t, testbed.IPv4Only())
	empty := testbed.NewNetns(t, testbed.IPv4Only())
	for _, ns := range []*testbed.Netns{notReady, empty} {
		if err := ns.IstioIptables(t.Context(), testbed.DefaultSidecarArgs()...); err != nil {
			t.Fatal(err)
		}
	}
	notReadyStandIn(t, notReady.Path())
	out, code := runMeshdoctor(t, "check", "--netns", notReady.Path(), "--netns", empty.Path(), "--host-root", root,
		"-o", "json", "--node-backend", "none", "--proxy-probe-timeout", "2s", "--proxy-ready-grace", "5s",
		"--proxy-ready-deadline", "2m", "--hold-application-until-proxy-starts", "--app-log-window", "10s")
	var rep nodecheck.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("exit %d, report: %v\n%s", code, err, out)
	}
	if len(rep.Pods) != 2 {
		t.Fatalf("pods: %+v", rep.Pods)
	}
	for i, p := range rep.Pods {
		if !slices.ContainsFunc(p.Checks, func(r nodecheck.CheckRun) bool { return r.Check == "proxy-ready" && r.Result != "error" }) {
			t.Errorf("%s: the proxy-ready check did not run: %+v", p.Netns, p.Checks)
		}
		var codes []nodecheck.Code
		for _, f := range p.Findings {
			codes = append(codes, f.Code)
		}
		if has := slices.Contains(codes, nodecheck.ProxyNotReady); has != (i == 0) {
			t.Errorf("%s: findings %v", p.Netns, codes)
		}
	}
	for _, f := range rep.Pods[0].Findings {
		if f.Code != nodecheck.ProxyNotReady {
			continue
		}
		if f.Severity != nodecheck.SeverityWarning || !strings.Contains(f.Message, "answered 503") ||
			!strings.Contains(f.Message, string(nodecheck.IstiodAPIServerUnreachable)) {
			t.Errorf("ProxyNotReady of a bare namespace, with istiod away: %+v", f)
		}
	}

	for _, bad := range [][]string{
		{"--proxy-ready-grace", "2m", "--proxy-ready-deadline", "1m"},
		{"--proxy-probe-timeout", "soon"},
	} {
		args := append([]string{"check", "--netns", empty.Path(), "--host-root", root}, bad...)
		if _, code := runMeshdoctor(t, args...); code != exitCannot {
			t.Errorf("%v: exit %d, want %d", bad, code, exitCannot)
		}
	}
}
