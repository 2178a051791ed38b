package proxyready

import (
	"fmt"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// Protection is what makes a pod's app containers wait for istio-proxy to be ready at start.
type Protection string

// Protections, as Istio's injector sets them up.
const (
	// ProtectionNativeSidecar: istio-proxy is an init container with restartPolicy Always
	// (Kubernetes sidecar containers); kubelet starts the app containers once its startup probe
	// passes.
	ProtectionNativeSidecar Protection = "native-sidecar"
	// ProtectionHold: holdApplicationUntilProxyStarts; the injector puts istio-proxy first with a
	// postStart hook, `pilot-agent wait`, and kubelet starts the next container once it returns.
	ProtectionHold Protection = "hold-application-until-proxy-starts"
	// ProtectionNone: nothing orders the start; istio-proxy is the pod's last container.
	ProtectionNone Protection = "none"
	// ProtectionUnknown: the pod's proxy configuration could not be read.
	ProtectionUnknown Protection = "unknown"
)

// PodProtection is a pod's protection and where it comes from.
type PodProtection struct {
	Kind   Protection `json:"kind"`
	Source string     `json:"source"`
}

// protectionOf reads a pod's protection from its annotations as the injector resolved them:
// the containers it added (sidecar.istio.io/status) and the pod's proxy.istio.io/config over
// the mesh default, which the node cannot read without the API server and is given as
// holdDefault. A native sidecar wins: the injection template applies the hold only without one.
func protectionOf(annotations map[string]string, holdDefault bool) PodProtection {
	if status, ok := istiopod.ParseSidecarStatus(annotations); ok && slices.Contains(status.InitContainers, istiopod.ContainerIstioProxy) {
		return PodProtection{Kind: ProtectionNativeSidecar,
			Source: istiopod.AnnotationSidecarStatus + " lists istio-proxy among the init containers"}
	}
	hold, set, err := holdAnnotation(annotations[istiopod.AnnotationProxyConfig])
	switch {
	case err != nil:
		return PodProtection{Kind: ProtectionUnknown, Source: err.Error()}
	case set && hold:
		return PodProtection{Kind: ProtectionHold, Source: "holdApplicationUntilProxyStarts: true in the pod's " + istiopod.AnnotationProxyConfig}
	case set:
		return PodProtection{Kind: ProtectionNone, Source: "holdApplicationUntilProxyStarts: false in the pod's " + istiopod.AnnotationProxyConfig +
			"; istio-proxy is not a native sidecar"}
	case holdDefault:
		return PodProtection{Kind: ProtectionHold, Source: "the mesh default (meshConfig.defaultConfig.holdApplicationUntilProxyStarts, as given to meshdoctor)"}
	}
	return PodProtection{Kind: ProtectionNone, Source: "istio-proxy is not a native sidecar and holdApplicationUntilProxyStarts is off " +
		"(not in the pod's " + istiopod.AnnotationProxyConfig + ", off in the mesh default given to meshdoctor)"}
}

// holdAnnotation reads holdApplicationUntilProxyStarts from a proxy.istio.io/config annotation
// (ProxyConfig in YAML or JSON).
func holdAnnotation(v string) (hold, set bool, err error) {
	if strings.TrimSpace(v) == "" {
		return false, false, nil
	}
	var pc struct {
		Hold *bool `json:"holdApplicationUntilProxyStarts"`
	}
	if err := yaml.Unmarshal([]byte(v), &pc); err != nil {
		return false, false, fmt.Errorf("annotation %s is not a valid proxy config: %w", istiopod.AnnotationProxyConfig, err)
	}
	if pc.Hold == nil {
		return false, false, nil
	}
	return *pc.Hold, true, nil
}
