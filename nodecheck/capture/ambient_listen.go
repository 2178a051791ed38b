package capture

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// targetSocket is one socket the capture rules send traffic to, which someone (ztunnel in an
// enrolled pod, Envoy in a sidecar pod) must hold in the pod's namespace for the rules to lead
// somewhere.
type targetSocket struct {
	proto rules.Proto
	port  uint16
}

func (s targetSocket) String() string { return fmt.Sprintf("%s/%d", s.proto, s.port) }

// listening splits want into the sockets found among the namespace's listeners (as the
// listeners found) and the ones missing: a socket of the protocol bound to the port, on any
// address of either family. Which address the owner binds (wildcard or loopback, one family or
// both) is its choice and varies with its settings; the port is what the rules name, so the port
// is what is judged. A UDP socket is neither found nor missing when the reader did not list UDP
// (snap.UDPNotListed: no rule sends UDP anywhere, so no UDP socket is a redirect's target).
func listening(want []targetSocket, snap rules.Snapshot) (found, missing []string) {
	found = []string{}
	listeners := snap.Listeners
	for _, w := range want {
		if w.proto == rules.UDP && snap.UDPNotListed {
			continue
		}
		n := len(found)
		for _, l := range listeners {
			if l.Proto == w.proto && l.Addr.Port() == w.port {
				found = append(found, l.String())
			}
		}
		if len(found) == n {
			missing = append(missing, w.String())
		}
	}
	slices.Sort(found)
	return found, missing
}

// ztunnelSockets lists the sockets the pod's ambient capture sends traffic to: outbound always
// (the virtual interfaces' inbound too); inbound plaintext and HBONE while inbound is captured
// (the inbound redirect spares HBONE's port, to which mesh peers connect directly); DNS over UDP
// and TCP while DNS is captured. When the pod does not say whether DNS is captured, the DNS
// redirect being among the rules says it is.
func ztunnelSockets(cfg intent.AmbientConfig, sets []*rules.RuleSet) []targetSocket {
	out := []targetSocket{{rules.TCP, ztunnelOutboundPort}}
	if !cfg.BypassInbound {
		out = append(out, targetSocket{rules.TCP, ztunnelInboundPlaintext}, targetSocket{rules.TCP, ztunnelInboundPort})
	}
	if (cfg.DNS != nil && *cfg.DNS) || (cfg.DNS == nil && redirectsTo(sets, ztunnelDNSPort)) {
		out = append(out, targetSocket{rules.TCP, ztunnelDNSPort}, targetSocket{rules.UDP, ztunnelDNSPort})
	}
	return out
}

// redirectsTo reports whether an Istio chain of any set redirects to port.
func redirectsTo(sets []*rules.RuleSet, port int) bool {
	args := fmt.Sprintf("--to-ports %d", port)
	for _, s := range sets {
		for _, t := range s.Tables {
			for _, c := range t.Chains {
				if !istioChain(c.Name) {
					continue
				}
				for _, r := range c.Rules {
					if r.Target.Name == "REDIRECT" && r.Target.Args == args {
						return true
					}
				}
			}
		}
	}
	return false
}

// ambientListeners checks that ztunnel listens in the pod behind the rules. Only meaningful once
// the rules verify; when they do not, the rule findings already say why traffic is lost.
func ambientListeners(cfg intent.AmbientConfig, snap rules.Snapshot) (nodecheck.Finding, bool) {
	found, missing := listening(ztunnelSockets(cfg, snap.Sets), snap)
	if len(missing) == 0 {
		return nodecheck.Finding{}, false
	}
	return nodecheck.Finding{
		Code:     nodecheck.CaptureTargetNotListening,
		Severity: nodecheck.SeverityError,
		Message: "ghost enrollment: the rules redirect to ztunnel's sockets and nothing listens on " +
			strings.Join(missing, ", ") + " in the pod's network namespace; the pod looks enrolled " +
			"while the traffic captured there is lost",
		Remedy: "ztunnel on this node lost the pod: check the ztunnel pod on this node (kubectl -n istio-system get pods " +
			"-l app=ztunnel --field-selector spec.nodeName=<node>) and its logs for this pod; restart ztunnel " +
			"or the pod so ztunnel takes the pod's namespace over again.",
		Evidence:  map[string]any{"missing": missing, "found": found},
		Component: nodecheck.ComponentZtunnel,
	}, true
}

func hasSeverity(fs []nodecheck.Finding, sev nodecheck.Severity) bool {
	for _, f := range fs {
		if f.Severity == sev {
			return true
		}
	}
	return false
}
