package proxyready

import (
	"context"
	"fmt"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Readiness answers whether a pod's proxy reports ready on its status port, for a check that
// judges what only a ready proxy is sure to have (the capture check: Envoy's listeners behind the
// redirect rules). It probes exactly as the proxy-ready check does.
type Readiness struct {
	Prober Prober
}

// ProxyReady probes the target's status port. ready is false, with what was seen, when the
// status server is disabled or the proxy is not ready; err is for a probe that could not be made
// (the namespace is gone) or a status port annotation that is not a port.
func (r Readiness) ProxyReady(ctx context.Context, t nodecheck.Target) (ready bool, seen string, err error) {
	port, err := statusPort(t.Annotations)
	if err != nil {
		return false, "", err
	}
	if port == 0 {
		return false, "pilot-agent's status server is disabled", nil
	}
	p, err := r.Prober.Probe(ctx, t.Netns, port)
	if err != nil {
		return false, "", fmt.Errorf("asking whether the proxy is ready: %w", err)
	}
	switch p.Outcome {
	case OutcomeReady, OutcomeNotReady:
		return p.Outcome == OutcomeReady, fmt.Sprintf("%s answered %d", p.URL, p.Status), nil
	default:
		return false, fmt.Sprintf("%s: %s (%s)", p.URL, p.Outcome, p.Error), nil
	}
}
