// Package istiopod is Istio's pod vocabulary.
//
// It holds the annotations, labels and container names Istio's injector and istio-cni put on a
// pod, the injector's sidecar status, and whether a pod is meant to be captured at all and how.
//
// It is a leaf that discovery and every check import, as Istio keeps such names in its own leaf
// packages (istio/api's annotation and label, istio-iptables' constants), so that no consumer
// reaches them through a check.
package istiopod

import (
	"encoding/json"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Annotation keys the injector (or the user) sets on a pod, and that decide its capture rules.
const (
	AnnotationInterceptionMode     = "sidecar.istio.io/interceptionMode"
	AnnotationSidecarStatus        = "sidecar.istio.io/status"
	AnnotationStatusPort           = "status.sidecar.istio.io/port"
	AnnotationProxyConfig          = "proxy.istio.io/config"
	AnnotationIncludeInboundPorts  = "traffic.sidecar.istio.io/includeInboundPorts"
	AnnotationExcludeInboundPorts  = "traffic.sidecar.istio.io/excludeInboundPorts"
	AnnotationIncludeOutboundCIDRs = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	AnnotationExcludeOutboundCIDRs = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	AnnotationIncludeOutboundPorts = "traffic.sidecar.istio.io/includeOutboundPorts"
	AnnotationExcludeOutboundPorts = "traffic.sidecar.istio.io/excludeOutboundPorts"
	AnnotationExcludeInterfaces    = "traffic.sidecar.istio.io/excludeInterfaces"
	AnnotationKubevirtInterfaces   = "traffic.sidecar.istio.io/kubevirtInterfaces"
	AnnotationRerouteInterfaces    = "istio.io/reroute-virtual-interfaces"
	AnnotationAmbientRedirection   = "ambient.istio.io/redirection"
)

// Interception modes of sidecar.istio.io/interceptionMode.
const (
	ModeRedirect = "REDIRECT"
	ModeTProxy   = "TPROXY"
	ModeNone     = "NONE"
)

// Keys that decide whether a pod is captured at all, and how.
const (
	// LabelDataplaneMode enrols a pod (or, through the API, its namespace) in ambient mode with
	// "ambient", or keeps it out with "none".
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// AnnotationAmbientBypassInbound puts an ambient pod in "ingress mode": inbound is not captured.
	AnnotationAmbientBypassInbound = "ambient.istio.io/bypass-inbound-capture"
	// AnnotationAmbientDNSCapture turns ztunnel's DNS capture on or off for one ambient pod.
	AnnotationAmbientDNSCapture = "ambient.istio.io/dns-capture"
)

// Container names Istio's injector gives.
const (
	ContainerIstioInit       = "istio-init"
	ContainerIstioValidation = "istio-validation"
	ContainerIstioProxy      = "istio-proxy"
)

// Expectation is how a pod is meant to be captured.
type Expectation string

// Expectations.
const (
	ExpectSidecar Expectation = "sidecar"
	ExpectAmbient Expectation = "ambient"
	ExpectNone    Expectation = "none"
)

// Expect decides, from what the node knows of a pod, how it is meant to be captured, and says why.
// A sidecar wins over ambient enrolment, as in Istio (istio-cni leaves injected pods alone).
//
// What the node cannot see: enrolment of the pod's namespace (istio.io/dataplane-mode on the
// Namespace object). A pod enrolled that way carries ambient.istio.io/redirection only once
// istio-cni annotated it through the API, which the sandbox's copy of the annotations predates:
// such a pod is seen as not captured unless the caller adds what the API knows.
func Expect(t nodecheck.Target) (Expectation, string) {
	switch {
	case t.HostNetwork:
		return ExpectNone, "host network: Istio never captures a pod that shares the node's network namespace"
	case Injected(t):
		return ExpectSidecar, "Istio sidecar injected"
	case AmbientEnrolled(t):
		return ExpectAmbient, "enrolled in Istio ambient mode"
	}
	return ExpectNone, "no Istio sidecar and not enrolled in ambient mode"
}

// Injected reports whether the pod has Istio's sidecar: the injector's status annotation or an
// istio-proxy container (regular or native sidecar).
func Injected(t nodecheck.Target) bool {
	if _, ok := t.Annotations[AnnotationSidecarStatus]; ok {
		return true
	}
	return t.Container(ContainerIstioProxy) != nil
}

// AmbientEnrolled reports whether the pod is meant to be captured by ambient mode: istio-cni
// annotated it (ambient.istio.io/redirection: enabled) or its own label enrols it.
func AmbientEnrolled(t nodecheck.Target) bool {
	if t.Labels[LabelDataplaneMode] == "none" {
		return false
	}
	return t.Annotations[AnnotationAmbientRedirection] == "enabled" || t.Labels[LabelDataplaneMode] == "ambient"
}

// SidecarStatus is the injector's sidecar.istio.io/status annotation: which containers it added.
type SidecarStatus struct {
	InitContainers []string `json:"initContainers"`
	Containers     []string `json:"containers"`
	Revision       string   `json:"revision"`
}

// ParseSidecarStatus reads the sidecar.istio.io/status annotation; ok is false when absent or
// malformed.
func ParseSidecarStatus(annotations map[string]string) (SidecarStatus, bool) {
	v, present := annotations[AnnotationSidecarStatus]
	if !present || strings.TrimSpace(v) == "" {
		return SidecarStatus{}, false
	}
	var s SidecarStatus
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return SidecarStatus{}, false
	}
	return s, true
}
