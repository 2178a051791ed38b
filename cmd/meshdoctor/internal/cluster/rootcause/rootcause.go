// Package rootcause holds the cluster-level root causes no single node can see, as pure functions
// and folds over what `meshdoctor cluster` read from the API server and the nodes' reports: pod
// security that strips or refuses istio-init's capabilities (PodSecurityBlocksInit), nodes whose
// pods rely on istio-cni without a ready istio-cni-node pod (IstioCNINodeNotReady), and the API
// server's availability behind istiod's outages (IstiodAPIServerUnreachable).
//
// They reuse the contract's codes with their meaning instead of adding cluster-only ones, so the
// agent's nodecheck.AllCodes (its metric series) is unchanged. Folds keep counts and a bounded
// sample, never every object, so a cluster of thousands of nodes is read page by page.
package rootcause

import (
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Istio's names for what the analyses look at.
const (
	containerIstioInit       = "istio-init"
	containerIstioValidation = "istio-validation"
	annotationSidecarStatus  = "sidecar.istio.io/status"
	labelInjection           = "istio-injection"
	labelRevision            = "istio.io/rev"
	labelDataplaneMode       = "istio.io/dataplane-mode"
	// labelIstioCNINode is the label of istio-cni-node pods in Istio's chart.
	labelIstioCNINode = "k8s-app"
	valueIstioCNINode = "istio-cni-node"
)

// Pod Security Admission's namespace labels.
const (
	labelEnforce        = "pod-security.kubernetes.io/enforce"
	labelEnforceVersion = "pod-security.kubernetes.io/enforce-version"
)

// CNIInstall says whether istio-cni runs anywhere in the cluster.
type CNIInstall string

// What the pod listing told of istio-cni.
const (
	CNIUnknown      CNIInstall = "unknown"
	CNIInstalled    CNIInstall = "installed"
	CNINotInstalled CNIInstall = "not-installed"
)

// maxSample bounds the names a fold keeps as examples; the rest are counted.
const maxSample = 5

// sample keeps the smallest names in order, so that what is shown does not depend on the order
// in which pages or nodes arrived.
type sample struct {
	Names []string
	Other int
}

func (s *sample) add(name string, limit int) {
	i, found := slices.BinarySearch(s.Names, name)
	if found {
		return
	}
	if len(s.Names) < limit {
		s.Names = slices.Insert(s.Names, i, name)
		return
	}
	// Full: the name replaces the largest one if it sorts before it.
	s.Other++
	if i < len(s.Names) {
		s.Names = slices.Insert(s.Names[:len(s.Names)-1], i, name)
	}
}

func (s sample) String() string {
	out := strings.Join(s.Names, ", ")
	if s.Other > 0 {
		out += " and " + strconv.Itoa(s.Other) + " more"
	}
	return out
}

// injected reports whether Istio's injector injected the pod, and whether in CNI mode
// (istio-validation instead of istio-init), from its init containers or the injector's status.
func injected(p *corev1.Pod) (sidecar, cniMode bool) {
	for _, c := range p.Spec.InitContainers {
		switch c.Name {
		case containerIstioInit:
			sidecar = true
		case containerIstioValidation:
			sidecar, cniMode = true, true
		}
	}
	if status := p.Annotations[annotationSidecarStatus]; status != "" {
		sidecar = true
		if strings.Contains(status, `"`+containerIstioValidation+`"`) {
			cniMode = true
		}
	}
	return sidecar, cniMode
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
