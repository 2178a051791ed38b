package proxyready

import (
	"os/exec"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// benchPod is a pod namespace with Istio's rules and pilot-agent serving a ready proxy.
func benchPod(b *testing.B) *testbed.Netns {
	b.Helper()
	testbed.RequirePrivileged(b)
	ns := testbed.NewNetns(b, testbed.IPv4Only())
	if err := ns.IstioIptables(b.Context(), testbed.DefaultSidecarArgs()...); err != nil {
		b.Fatal(err)
	}
	startEnvoyAdminStandIn(b, ns.Path(), adminLive)
	startPilotAgent(b, ns)
	return ns
}

// BenchmarkProbe is the probe of one pod, beside what it replaces: entering the namespace with
// nsenter and asking curl (the baseline), and nsenter alone running true (the floor of any probe
// that runs a process).
func BenchmarkProbe(b *testing.B) {
	ns := benchPod(b)
	url := "http://localhost:15020" + ReadyPath
	b.Run("netns-prober", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := (NetnsProber{}).Probe(b.Context(), ns.Path(), DefaultStatusPort)
			if err != nil || p.Outcome != OutcomeReady {
				b.Fatalf("%+v %v", p, err)
			}
		}
	})
	b.Run("nsenter-curl", func(b *testing.B) {
		for b.Loop() {
			out, err := exec.CommandContext(b.Context(), "nsenter", "--net="+ns.Path(),
				"curl", "-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}", url).Output()
			if err != nil || string(out) != "200" {
				b.Fatalf("%s %v", out, err)
			}
		}
	})
	b.Run("nsenter-true", func(b *testing.B) {
		for b.Loop() {
			if err := exec.CommandContext(b.Context(), "nsenter", "--net="+ns.Path(), "true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCheck is the whole check of one pod: the probe, and the log reads that prove the start
// order of an unprotected pod and cite the app's refused connection.
func BenchmarkCheck(b *testing.B) {
	ns := benchPod(b)
	dir := b.TempDir()
	sc := scenarios()[8] // app-before-proxy-unprotected
	target := podTarget(sc, nodecheck.Target{Netns: ns.Path(), Annotations: map[string]string{}})
	pod := dir + "/shop_app-7d9_" + podUID
	writeCRILog(b, pod+"/istio-proxy/0.log", []criLine{
		{t0.Add(1500 * time.Millisecond), "2026-08-27T12:00:01.500000Z\twarn\tEnvoy proxy is NOT ready: config not received from XDS server (is Istiod running?): cds updates: 0 successful, 0 rejected; lds updates: 0 successful, 0 rejected"},
		{t0.Add(3 * time.Second), "2026-08-27T12:00:03.000000Z\tinfo\tEnvoy proxy is ready"},
	})
	writeCRILog(b, pod+"/app/0.log", []criLine{{t0.Add(1200 * time.Millisecond), "dial tcp 10.96.12.7:8080: connect: connection refused"}})
	chk, err := New(Config{Prober: NetnsProber{}, PodLogDir: dir, Now: func() time.Time { return t0.Add(10 * time.Minute) }})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		res, err := chk.Check(b.Context(), target)
		if err != nil || len(res.Findings) != 1 {
			b.Fatalf("%+v %v", res.Findings, err)
		}
	}
}
