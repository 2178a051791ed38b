package proxyready

import (
	"context"
	"fmt"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/logscan"
)

// Proofs that an app container started before the proxy was ready. Each is a fact, not a guess:
// the proxy readiness time itself is not known on the node (pilot-agent logs only the first
// success of a probe, which may come later than readiness).
const (
	// proofStartOrder: istio-proxy (this run of it) started after the app container, or not at all.
	proofStartOrder = "start-order"
	// proofProbe: the probe says the proxy is not ready now, and the app container runs.
	proofProbe = "probe"
	// proofProxyLog: pilot-agent logged a failed readiness check after the app container started
	// and before its first success. Once ready, Envoy stays ready (pilot-agent caches it), so
	// the proxy was not ready when the app started.
	proofProxyLog = "proxy-log"
)

// appStart is one app container that started before the proxy was ready.
type appStart struct {
	Name      string           `json:"name"`
	StartedAt string           `json:"startedAt"`
	Proof     string           `json:"proof"`
	Detail    string           `json:"detail"`
	ProxyLog  *logscan.Sample  `json:"proxyLog,omitempty"`
	Refused   []logscan.Sample `json:"refusedConnections,omitempty"`
}

// startOrder reports the app containers that started before istio-proxy was ready.
func (v *podView) startOrder(ctx context.Context, prot PodProtection) (nodecheck.Finding, bool) {
	if v.proxy == nil {
		return nodecheck.Finding{}, false
	}
	var apps []appStart
	var sentences []string
	refused, restarted := false, false
	for i := range v.t.Containers {
		app := &v.t.Containers[i]
		if app.Role != nodecheck.RoleApp || app.StartedAt.IsZero() {
			continue
		}
		if app.State == nodecheck.ContainerExited && !app.FinishedAt.IsZero() && !v.proxy.StartedAt.IsZero() &&
			!app.FinishedAt.After(v.proxy.StartedAt) {
			// Done before the proxy started: one of the pod's own init containers (the node cannot
			// tell them from app containers), which run before the proxy by design.
			continue
		}
		a, ok := v.beforeReady(ctx, app)
		if !ok {
			continue
		}
		if a.Proof == proofStartOrder && v.proxy.Attempt > 0 && !v.proxy.StartedAt.IsZero() {
			restarted = true
		}
		a.Refused = v.search(ctx, v.c.refusedQ, app, logscan.Window{
			Until: app.StartedAt.Add(v.c.cfg.AppLogWindow), Limit: maxAppLogLines,
		})
		s := fmt.Sprintf("app container %q started at %s before istio-proxy was ready: %s", a.Name, a.StartedAt, a.Detail)
		if len(a.Refused) > 0 {
			refused = true
			s += fmt.Sprintf("; its log shows refused connections within %s of its start: %q", ago(v.c.cfg.AppLogWindow), a.Refused[0].Line)
		}
		apps = append(apps, a)
		sentences = append(sentences, s)
	}
	if len(apps) == 0 {
		return nodecheck.Finding{}, false
	}
	protected := prot.Kind == ProtectionNativeSidecar || prot.Kind == ProtectionHold
	sev := nodecheck.SeverityInfo
	if refused || protected || v.probe.Outcome != OutcomeReady {
		// It hurt (the app's own log), it should not have happened (a protected pod), or it is
		// happening now (the proxy is still not ready).
		sev = nodecheck.SeverityWarning
	}
	msg := strings.Join(sentences, "; ") + "; " + protectionSentence(prot, restarted)
	return nodecheck.Finding{
		Code:     nodecheck.AppStartedBeforeProxy,
		Severity: sev,
		Message:  msg,
		Remedy:   startOrderRemedy(prot, restarted, v.port),
		Evidence: map[string]any{
			"containers": apps,
			"proxy":      containerEvidence(*v.proxy),
			"protection": prot,
		},
	}, true
}

// beforeReady decides, from facts only, whether app started before the proxy was ready.
func (v *podView) beforeReady(ctx context.Context, app *nodecheck.Container) (appStart, bool) {
	a := appStart{Name: app.Name, StartedAt: stamp(app.StartedAt)}
	proxy := v.proxy
	switch {
	case proxy.StartedAt.IsZero():
		a.Proof, a.Detail = proofStartOrder, fmt.Sprintf("istio-proxy has not started (it is %s)", proxy.State)
		return a, true
	case proxy.StartedAt.After(app.StartedAt):
		a.Proof = proofStartOrder
		a.Detail = fmt.Sprintf("istio-proxy only started at %s, %s later", stamp(proxy.StartedAt), ago(proxy.StartedAt.Sub(app.StartedAt)))
		if proxy.Attempt > 0 {
			a.Detail = fmt.Sprintf("istio-proxy restarted (attempt %d) at %s, %s after the app started", proxy.Attempt,
				stamp(proxy.StartedAt), ago(proxy.StartedAt.Sub(app.StartedAt)))
		}
		return a, true
	case v.probe.Outcome != OutcomeReady && app.State == nodecheck.ContainerRunning:
		a.Proof = proofProbe
		a.Detail = fmt.Sprintf("the proxy is still not ready (probe: %s) while the app runs", v.probe.Outcome)
		return a, true
	}
	// The proxy started first and is ready now: was it ready when the app started?
	notReady := v.search(ctx, v.c.notReadyQ, proxy, logscan.Window{Since: app.StartedAt})
	if len(notReady) == 0 {
		return a, false
	}
	ready := v.proxyReadyLine(ctx)
	if ready != nil && !notReady[0].Time.Before(ready.Time) {
		return a, false
	}
	a.Proof = proofProxyLog
	a.ProxyLog = &notReady[0]
	a.Detail = fmt.Sprintf("pilot-agent reported the proxy not ready at %s, after the app started", stamp(notReady[0].Time))
	if ready != nil {
		a.Detail += ", and ready only at " + stamp(ready.Time)
	}
	return a, true
}

func protectionSentence(p PodProtection, restarted bool) string {
	switch p.Kind {
	case ProtectionNativeSidecar:
		s := "the pod uses a native sidecar (" + p.Source + "), so kubelet starts app containers only once istio-proxy's startup probe passes"
		if restarted {
			return s + ", but a native sidecar restarts on its own while the app keeps running: the protection covers the pod's start only"
		}
		return s + ", yet the order did not hold (istio-proxy without a startup probe, or restarted)"
	case ProtectionHold:
		s := "the pod holds its app until the proxy starts (" + p.Source + "): kubelet starts the app once istio-proxy's " +
			"postStart hook, `pilot-agent wait`, has seen it ready"
		if restarted {
			return s + ", but that covers the pod's start only, not a restart of istio-proxy under a running app"
		}
		return s + ", yet the order did not hold (a custom proxy lifecycle replaces the hook, or istio-proxy is not the pod's first container)"
	case ProtectionUnknown:
		return "whether the pod is protected is unknown: " + p.Source
	}
	return "nothing protects the pod: " + p.Source
}

func startOrderRemedy(p PodProtection, restarted bool, port uint16) string {
	guide := fmt.Sprintf("Make the app wait for its proxy: poll http://localhost:%d%s until it answers 200 before the "+
		"first outbound request, or retry requests that fail at startup (the fixes of Istio's troubleshooting guide).", port, ReadyPath)
	order := " Or let Kubernetes order the start: set holdApplicationUntilProxyStarts: true (pod annotation " +
		"proxy.istio.io/config, or meshConfig.defaultConfig for the whole mesh) so kubelet starts the app once the proxy " +
		"is ready; where the cluster has native sidecars (Kubernetes 1.29+), sidecar.istio.io/nativeSidecar: \"true\" " +
		"(or ENABLE_NATIVE_SIDECARS in istiod) runs istio-proxy as an init container that the app waits for."
	switch {
	case restarted:
		return "istio-proxy restarted while the app ran: find out why (kubectl logs POD -c istio-proxy --previous; " +
			"kubectl describe pod POD), and make the app retry requests that fail while its proxy is away. " + guide
	case p.Kind == ProtectionNativeSidecar || p.Kind == ProtectionHold:
		return "The startup ordering did not hold: check istio-proxy's startup probe (native sidecar) or its postStart " +
			"hook (holdApplicationUntilProxyStarts) in the pod spec, and the injector's values (global.proxy.lifecycle " +
			"replaces the hook). " + guide
	}
	return guide + order
}
