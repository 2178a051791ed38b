package proxyready

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// hostListener listens on the node's own 127.0.0.1:15020 and counts the connections it gets: a
// probe that leaked out of the pod's namespace would land here.
type hostListener struct {
	ln       net.Listener
	accepted atomic.Int64
}

func listenOnHost(t *testing.T) *hostListener {
	ln, err := net.Listen("tcp4", "127.0.0.1:15020")
	if err != nil {
		t.Fatalf("the node's 127.0.0.1:15020 must be free for this test: %v", err)
	}
	h := &hostListener{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			// Answer 200 so that a leak would look like a ready proxy, not like a failure.
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			c.Close()
		}
	}()
	return h
}

// TestProbeNeverLeavesTheNetns probes pods with and without a proxy while the node itself has a
// "ready" server on 127.0.0.1:15020: the probes must see the pod's answer (or the pod's refusal)
// and the node's server must get nothing.
func TestProbeNeverLeavesTheNetns(t *testing.T) {
	testbed.RequirePrivileged(t)
	host := listenOnHost(t)
	empty := testbed.NewNetns(t, testbed.IPv4Only())
	withProxy := testbed.NewNetns(t, testbed.IPv4Only())
	for _, ns := range []*testbed.Netns{empty, withProxy} {
		if err := ns.IstioIptables(t.Context(), testbed.DefaultSidecarArgs()...); err != nil {
			t.Fatal(err)
		}
	}
	startEnvoyAdminStandIn(t, withProxy.Path(), adminNoXDS)
	startPilotAgent(t, withProxy)

	for range 20 {
		p, err := (NetnsProber{}).Probe(t.Context(), empty.Path(), DefaultStatusPort)
		if err != nil {
			t.Fatal(err)
		}
		if p.Outcome != OutcomeRefused {
			t.Fatalf("a pod without a proxy: want refused, got %+v", p)
		}
		p, err = (NetnsProber{}).Probe(t.Context(), withProxy.Path(), DefaultStatusPort)
		if err != nil {
			t.Fatal(err)
		}
		if p.Outcome != OutcomeNotReady || p.Status != http.StatusServiceUnavailable {
			t.Fatalf("a pod whose pilot-agent has no configuration: want 503, got %+v", p)
		}
	}
	if n := host.accepted.Load(); n != 0 {
		t.Fatalf("the node's 127.0.0.1:15020 got %d connection(s) from probes of pods", n)
	}
	// The node's server does answer: had a probe left the pod, it would have been counted.
	c, err := net.Dial("tcp4", "127.0.0.1:15020")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, c)
	c.Close()
	if n := host.accepted.Load(); n != 1 {
		t.Fatalf("the node's listener counted %d connection(s) for one dial", n)
	}
}

// TestCheckLeavesNoTrace runs the whole check on a pod namespace with Istio's rules and a live
// pilot-agent: its tables, chains and rules in every backend are the same before and after.
func TestCheckLeavesNoTrace(t *testing.T) {
	testbed.RequirePrivileged(t)
	ns := testbed.NewNetns(t)
	if err := ns.IstioIptables(t.Context(), testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	startEnvoyAdminStandIn(t, ns.Path(), adminNoXDS)
	startPilotAgent(t, ns)
	before, err := ns.Trace(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	chk, err := New(Config{Prober: NetnsProber{}, PodLogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	sc := scenarios()[2] // not ready: the check reads the most (probe, proxy and app logs)
	target := podTarget(sc, nodecheck.Target{Netns: ns.Path(), Annotations: map[string]string{}})
	for range 3 {
		res, err := chk.Check(t.Context(), target)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Findings) == 0 {
			t.Fatal("the check found nothing on a proxy that is not ready")
		}
	}
	after, err := ns.Trace(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); d != "" {
		t.Errorf("the check changed the pod's namespace:\n%s", d)
	}
}

// TestProbeBounded: whatever answers on the status port, the probe reads a bounded amount and
// returns within its timeout.
func TestProbeBounded(t *testing.T) {
	testbed.RequirePrivileged(t)
	cases := []struct {
		name    string
		serve   func(c net.Conn)
		outcome Outcome
	}{
		{"huge body", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 104857600\r\n\r\n")
			chunk := []byte(strings.Repeat("x", 64<<10))
			for range 1600 {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}, OutcomeNotReady},
		{"endless headers", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			for {
				if _, err := io.WriteString(c, "X-Junk: "+strings.Repeat("y", 1000)+"\r\n"); err != nil {
					return
				}
			}
		}, OutcomeFailed},
		{"not HTTP", func(c net.Conn) { io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n") }, OutcomeFailed},
		{"silent", func(c net.Conn) { time.Sleep(5 * time.Second) }, OutcomeTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := testbed.NewNetns(t, testbed.IPv4Only())
			var ln net.Listener
			if err := innetns.Do(t.Context(), ns.Path(), func() error {
				var err error
				ln, err = net.Listen("tcp4", "127.0.0.1:15020")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.CopyN(io.Discard, c, 1) // the request has come
				tc.serve(c)
			}()
			start := time.Now()
			p, err := NetnsProber{Timeout: 500 * time.Millisecond}.Probe(t.Context(), ns.Path(), DefaultStatusPort)
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("the probe took %s with a 500ms timeout", took)
			}
			if p.Outcome != tc.outcome {
				t.Errorf("outcome %s, want %s (%+v)", p.Outcome, tc.outcome, p)
			}
			if len(p.Body) > maxBody {
				t.Errorf("read %d bytes of body, bound is %d", len(p.Body), maxBody)
			}
		})
	}
}

// TestProbeErrors: a namespace that vanished is an error the report turns into "unknown"; a
// cancelled check is an error, not a proxy that timed out.
func TestProbeErrors(t *testing.T) {
	testbed.RequirePrivileged(t)
	_, err := (NetnsProber{}).Probe(t.Context(), "/var/run/netns/md-never-existed", DefaultStatusPort)
	if !errors.Is(err, innetns.ErrNetnsGone) {
		t.Errorf("vanished namespace: want ErrNetnsGone, got %v", err)
	}
	ns := testbed.NewNetns(t, testbed.IPv4Only())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := (NetnsProber{}).Probe(ctx, ns.Path(), DefaultStatusPort); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled check: want context.Canceled, got %v", err)
	}
	chk, err := New(Config{Prober: NetnsProber{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chk.Check(t.Context(), nodecheck.Target{Netns: "/var/run/netns/md-never-existed"}); !errors.Is(err, innetns.ErrNetnsGone) {
		t.Errorf("check of a vanished namespace: want ErrNetnsGone, got %v", err)
	}
}

// TestProbeLeavesNoTrace: whatever the outcome (pilot-agent ready or not, nothing listening, the
// SYN dropped), the probe leaves the namespace's conntrack table and sockets as they were: its
// entry is deleted and its connection is closed without a TIME_WAIT on either end.
func TestProbeLeavesNoTrace(t *testing.T) {
	testbed.RequirePrivileged(t)
	cases := []struct {
		name    string
		setUp   func(t *testing.T, ns *testbed.Netns)
		outcome Outcome
	}{
		{"ready", func(t *testing.T, ns *testbed.Netns) {
			startEnvoyAdminStandIn(t, ns.Path(), adminLive)
			startPilotAgent(t, ns)
		}, OutcomeReady},
		{"not ready", func(t *testing.T, ns *testbed.Netns) {
			startEnvoyAdminStandIn(t, ns.Path(), adminNoXDS)
			startPilotAgent(t, ns)
		}, OutcomeNotReady},
		{"nothing listens", func(t *testing.T, ns *testbed.Netns) {}, OutcomeRefused},
		{"SYN dropped", func(t *testing.T, ns *testbed.Netns) {
			if err := ns.NftScript(t.Context(), "table inet md_test_drop {\n chain input { type filter hook input priority 0; tcp dport 15020 drop; }\n}\n"); err != nil {
				t.Fatal(err)
			}
		}, OutcomeTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := testbed.NewNetns(t, testbed.IPv4Only())
			// Istio's rules make the namespace track connections: without a rule that needs
			// conntrack, the kernel does not track a namespace's traffic at all.
			if err := ns.IstioIptables(t.Context(), testbed.DefaultSidecarArgs()...); err != nil {
				t.Fatal(err)
			}
			tc.setUp(t, ns)
			prober := NetnsProber{Timeout: 500 * time.Millisecond}
			// pilot-agent turns ready once it has read Envoy's stats: wait for the outcome
			// wanted, then take the trace and probe again.
			deadline := time.Now().Add(20 * time.Second)
			for {
				p, err := prober.Probe(t.Context(), ns.Path(), DefaultStatusPort)
				if err != nil {
					t.Fatal(err)
				}
				if p.Outcome == tc.outcome {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("outcome %s, want %s (%+v)", p.Outcome, tc.outcome, p)
				}
				time.Sleep(100 * time.Millisecond)
			}
			before, err := ns.Trace(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			for range 5 {
				p, err := prober.Probe(t.Context(), ns.Path(), DefaultStatusPort)
				if err != nil {
					t.Fatal(err)
				}
				if p.Outcome != tc.outcome || p.TraceLeft != "" {
					t.Errorf("outcome %s, want %s; trace left: %q", p.Outcome, tc.outcome, p.TraceLeft)
				}
			}
			after, err := ns.Trace(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(after); d != "" {
				t.Errorf("the probes changed the pod's namespace:\n%s", d)
			}
			out, err := ns.Exec(t.Context(), "ss", "-Htan", "state", "time-wait")
			if err != nil {
				t.Fatal(err)
			}
			if len(strings.TrimSpace(string(out))) > 0 {
				t.Errorf("sockets left in TIME_WAIT:\n%s", out)
			}
		})
	}
}
