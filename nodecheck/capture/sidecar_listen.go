package capture

import (
	"context"
	"fmt"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// ProxyReadiness tells whether a pod's proxy reports ready (proxyready.Readiness): ready is
// false, with what was seen, for a proxy that is not, or cannot say; err is for a question that
// could not be asked (the namespace is gone).
type ProxyReadiness interface {
	ProxyReady(ctx context.Context, t nodecheck.Target) (ready bool, seen string, err error)
}

// ListenerProof is what the capture check saw of the sockets behind a sidecar pod's redirects.
type ListenerProof struct {
	Missing []string `json:"missing,omitempty"`
	Found   []string `json:"found"`
	// Readiness is what the proxy's status port said, asked only when a socket is missing.
	Readiness string `json:"readiness,omitempty"`
	// NotJudged says why missing sockets gave no finding.
	NotJudged string `json:"notJudged,omitempty"`
}

// sidecarSockets lists the sockets a sidecar pod's rules redirect to: Envoy's virtual outbound
// listener while any outbound traffic is captured, its virtual inbound listener while any inbound
// port is, and pilot-agent's DNS proxy (TCP and UDP) while DNS is captured. pilot-agent opens its
// DNS proxy before it starts Envoy, so a ready proxy has all of them.
func sidecarSockets(cfg intent.Config) []targetSocket {
	var out []targetSocket
	if cfg.IncludeOutboundAll || len(cfg.IncludeOutboundCIDRs) > 0 || len(cfg.IncludeOutboundPorts) > 0 {
		out = append(out, targetSocket{rules.TCP, cfg.ProxyPort})
	}
	if cfg.IncludeInboundPorts != "" {
		out = append(out, targetSocket{rules.TCP, cfg.InboundCapturePort})
	}
	if cfg.RedirectDNS {
		out = append(out, targetSocket{rules.TCP, sidecarDNSPort}, targetSocket{rules.UDP, sidecarDNSPort})
	}
	return out
}

// sidecarDNSPort is where istio-init's DNS capture sends the app's DNS: pilot-agent's DNS proxy.
const sidecarDNSPort = 15053

// sidecarListeners checks that Envoy listens behind the rules, once they verify. Envoy opens
// those listeners when istiod's configuration arrives, which is also when pilot-agent starts to
// report the proxy ready: a proxy that is not ready yet has no listener and that is ProxyNotReady
// (the proxy-ready check), not a capture fault. So readiness is asked only when a socket is
// missing, and the finding is raised only for a ready proxy.
func sidecarListeners(ctx context.Context, ready ProxyReadiness, t nodecheck.Target, cfg intent.Config, snap rules.Snapshot) (*ListenerProof, nodecheck.Finding, bool, error) {
	want := sidecarSockets(cfg)
	if len(want) == 0 {
		return nil, nodecheck.Finding{}, false, nil
	}
	found, missing := listening(want, snap)
	proof := &ListenerProof{Missing: missing, Found: found}
	if len(missing) == 0 {
		return proof, nodecheck.Finding{}, false, nil
	}
	if ready == nil {
		proof.NotJudged = "the proxy's readiness is not asked by this check's configuration"
		return proof, nodecheck.Finding{}, false, nil
	}
	ok, seen, err := ready.ProxyReady(ctx, t)
	if err != nil {
		return nil, nodecheck.Finding{}, false, err
	}
	proof.Readiness = seen
	if !ok {
		proof.NotJudged = "the proxy is not ready, so its listeners may not be open yet (the proxy-ready check judges it)"
		return proof, nodecheck.Finding{}, false, nil
	}
	return proof, nodecheck.Finding{
		Code:     nodecheck.CaptureTargetNotListening,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("the proxy reports ready (%s), but nothing listens on %s in the pod's network namespace: "+
			"the connections Istio's rules redirect there are refused", seen, strings.Join(missing, ", ")),
		Remedy: "Envoy has no listener where istio-init (or istio-cni) sends the pod's traffic. List its listeners " +
			"(istioctl proxy-config listener <pod> -n <namespace>; virtualOutbound is on the -p port, virtualInbound on " +
			"-z). If those two are absent, the proxy was configured not to intercept (its interceptionMode is NONE) " +
			"while the rules redirect: make them agree, then restart the pod. If istiod sent it no listener at all, " +
			"look for istiod's push errors for this proxy (istioctl proxy-status). If 15053 is missing, istio-init " +
			"captures DNS but pilot-agent runs no DNS proxy: ISTIO_META_DNS_CAPTURE differs between the two " +
			"(proxy.istio.io/config proxyMetadata, or the mesh's defaultConfig): make them agree and restart the pod.",
		Evidence: map[string]any{"missing": missing, "found": found, "readiness": seen},
	}, true, nil
}
