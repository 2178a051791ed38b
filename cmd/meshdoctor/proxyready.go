package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/proxyready"
)

// proxyReadyOptions are the flags of the proxy readiness and start order check (problem 3 of the
// guide): how long a probe may take, how a not-ready proxy is graded by the pod's age, and the
// mesh default the node cannot read without the API server.
type proxyReadyOptions struct {
	probeTimeout  time.Duration
	grace         time.Duration
	deadline      time.Duration
	appLogWindow  time.Duration
	holdByDefault bool
}

func (p *proxyReadyOptions) register(f *pflag.FlagSet) {
	f.DurationVar(&p.probeTimeout, "proxy-probe-timeout", proxyready.DefaultProbeTimeout,
		"how long the probe of a pod's localhost:15020/healthz/ready may take")
	f.DurationVar(&p.grace, "proxy-ready-grace", proxyready.DefaultGrace,
		"a pod younger than this whose proxy is not ready is still starting (info)")
	f.DurationVar(&p.deadline, "proxy-ready-deadline", proxyready.DefaultDeadline,
		"a pod older than this whose proxy is not ready never got ready (error); in between, a warning")
	f.DurationVar(&p.appLogWindow, "app-log-window", proxyready.DefaultAppLogWindow,
		"how long after an app container's start its log is searched for refused connections")
	f.BoolVar(&p.holdByDefault, "hold-application-until-proxy-starts", false,
		"the mesh's default holdApplicationUntilProxyStarts (meshConfig.defaultConfig), which pods follow unless "+
			"their proxy.istio.io/config annotation says otherwise")
}

// check builds the check; podLogDir is kubelet's container log directory, conditions the node
// conditions a not-ready proxy is linked with (nil: none).
func (p *proxyReadyOptions) check(podLogDir string, conditions proxyready.NodeConditions) (*proxyready.Check, error) {
	return proxyready.New(proxyready.Config{
		Prober:        proxyready.NetnsProber{Timeout: p.probeTimeout},
		PodLogDir:     podLogDir,
		Conditions:    conditions,
		Grace:         p.grace,
		Deadline:      p.deadline,
		HoldByDefault: p.holdByDefault,
		AppLogWindow:  p.appLogWindow,
	})
}

// nodeConditions are the report's node-level findings as conditions a pod check links with: a
// condition holds while its finding says it is active (the log engine marks a transient condition
// that has cleared).
type nodeConditions []nodecheck.Finding

func (n nodeConditions) Active(code nodecheck.Code) (nodecheck.Finding, bool) {
	for _, f := range n {
		if f.Code == code && f.Evidence["state"] != "cleared" {
			return f, true
		}
	}
	return nodecheck.Finding{}, false
}
