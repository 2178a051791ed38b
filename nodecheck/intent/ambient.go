package intent

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// Where istio-cni SNATs the kubelet's probes of ambient pods on the node, by default.
const (
	defaultHostProbeSNAT     = "169.254.7.127"
	defaultHostProbeSNATIPv6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
)

// AmbientConfig is what decides an ambient pod's in-pod rules.
type AmbientConfig struct {
	// DNS is whether ztunnel captures the pod's DNS; nil when the pod does not say and the
	// node cannot know istio-cni's global setting (then DNS rules are accepted, not required).
	DNS *bool `json:"dns,omitempty"`
	// BypassInbound is "ingress mode": inbound traffic is not redirected to ztunnel.
	BypassInbound bool `json:"bypassInbound,omitempty"`
	// VirtualInterfaces have their inbound TCP sent to ztunnel's outbound port.
	VirtualInterfaces []string `json:"virtualInterfaces,omitempty"`
	// HostProbeSNAT addresses are what istio-cni SNATs the kubelet's probes to on the node.
	HostProbeSNAT     netip.Addr `json:"hostProbeSNAT"`
	HostProbeSNATIPv6 netip.Addr `json:"hostProbeSNATIPv6"`
}

// AmbientFromAnnotations resolves an ambient pod's in-pod configuration from its
// annotations, with istio-cni's defaults for what the pod does not say.
func AmbientFromAnnotations(a map[string]string) (AmbientConfig, error) {
	c := AmbientConfig{
		HostProbeSNAT:     netip.MustParseAddr(defaultHostProbeSNAT),
		HostProbeSNATIPv6: netip.MustParseAddr(defaultHostProbeSNATIPv6),
	}
	if v, ok := a[istiopod.AnnotationAmbientDNSCapture]; ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return c, fmt.Errorf("annotation %s: %q is not a boolean", istiopod.AnnotationAmbientDNSCapture, v)
		}
		c.DNS = &b
	}
	if v, ok := a[istiopod.AnnotationAmbientBypassInbound]; ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return c, fmt.Errorf("annotation %s: %q is not a boolean", istiopod.AnnotationAmbientBypassInbound, v)
		}
		c.BypassInbound = b
	}
	c.VirtualInterfaces = splitList(a[istiopod.AnnotationRerouteInterfaces])
	return c, nil
}
