package rootcause

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// maxCoverageNodes bounds the nodes a coverage finding lists in its evidence; the rest are counted.
const maxCoverageNodes = 50

// Coverage folds the cluster's pods into istio-cni's coverage: on which nodes pods rely on
// istio-cni (sidecars injected in CNI mode, ambient pods), and on which nodes an istio-cni-node
// pod runs and is ready. Only nodes with either are kept, with a bounded sample of pod names.
type Coverage struct {
	ambientNamespaces map[string]bool
	nodes             map[string]*nodeCoverage
	agents            int
}

type nodeCoverage struct {
	relying sample
	agent   string // the istio-cni-node pod, ready one preferred
	ready   bool
}

// NewCoverage returns an empty fold.
func NewCoverage() *Coverage {
	return &Coverage{ambientNamespaces: map[string]bool{}, nodes: map[string]*nodeCoverage{}}
}

// AddNamespace records namespaces enrolled in ambient mode; call it before AddPod for their pods.
func (c *Coverage) AddNamespace(ns *corev1.Namespace) {
	if ns.Labels[labelDataplaneMode] == "ambient" {
		c.ambientNamespaces[ns.Name] = true
	}
}

// AddPod records one pod: an istio-cni-node pod and its readiness, or a pod that relies on
// istio-cni. Finished, unscheduled and host-network pods are ignored.
func (c *Coverage) AddPod(p *corev1.Pod) {
	if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return
	}
	if p.Labels[labelIstioCNINode] == valueIstioCNINode {
		c.agents++
		n := c.node(p.Spec.NodeName)
		if ready := podReady(p); n.agent == "" || ready && !n.ready {
			n.agent, n.ready = p.Namespace+"/"+p.Name, ready
		}
		return
	}
	if p.Spec.HostNetwork || !c.relies(p) {
		return
	}
	c.node(p.Spec.NodeName).relying.add(p.Namespace+"/"+p.Name, 3)
}

// relies reports whether the pod's capture is istio-cni's work: a sidecar injected in CNI mode,
// or an ambient pod (enrolled by its own label or its namespace's, and not opted out).
func (c *Coverage) relies(p *corev1.Pod) bool {
	sidecar, cniMode := injected(p)
	if sidecar {
		return cniMode
	}
	switch p.Labels[labelDataplaneMode] {
	case "ambient":
		return true
	case "none":
		return false
	}
	return c.ambientNamespaces[p.Namespace]
}

func (c *Coverage) node(name string) *nodeCoverage {
	n, ok := c.nodes[name]
	if !ok {
		n = &nodeCoverage{}
		c.nodes[name] = n
	}
	return n
}

// Installed says whether any istio-cni-node pod runs in the cluster (meaningful once every pod
// was added).
func (c *Coverage) Installed() CNIInstall {
	if c.agents > 0 {
		return CNIInstalled
	}
	return CNINotInstalled
}

// coverageGap is one node in the finding's evidence.
type coverageGap struct {
	Node         string   `json:"node"`
	Pods         int      `json:"pods"`
	SamplePods   []string `json:"samplePods"`
	IstioCNINode string   `json:"istioCNINode,omitempty"`
	Ready        bool     `json:"ready"`
}

// Findings returns one IstioCNINodeNotReady listing the nodes whose pods rely on istio-cni while
// no ready istio-cni-node pod runs there (none, or none ready), or nothing when every such node is
// covered.
func (c *Coverage) Findings() []nodecheck.Finding {
	var gaps []coverageGap
	other := 0
	var pods int
	var words []string
	for _, name := range slices.Sorted(maps.Keys(c.nodes)) {
		n := c.nodes[name]
		count := len(n.relying.Names) + n.relying.Other
		if count == 0 || n.ready {
			continue
		}
		pods += count
		if len(gaps) >= maxCoverageNodes {
			other++
			continue
		}
		gaps = append(gaps, coverageGap{Node: name, Pods: count, SamplePods: n.relying.Names, IstioCNINode: n.agent, Ready: n.ready})
		if len(words) < maxSample {
			state := "no istio-cni-node pod"
			if n.agent != "" {
				state = n.agent + " not ready"
			}
			words = append(words, fmt.Sprintf("%s (%d pod(s), e.g. %s; %s)", name, count, n.relying.Names[0], state))
		}
	}
	if len(gaps) == 0 {
		return nil
	}
	total := len(gaps) + other
	msg := fmt.Sprintf("%d node(s) run %d pod(s) whose traffic capture is istio-cni's work (sidecars injected in CNI mode, "+
		"ambient pods) without a ready istio-cni-node pod: %s", total, pods, strings.Join(words, "; "))
	if total > len(words) {
		msg += fmt.Sprintf("; and %d more node(s)", total-len(words))
	}
	if c.agents == 0 {
		msg += "; no istio-cni-node pod runs anywhere in the cluster"
	}
	ev := map[string]any{"nodes": gaps, "istioCNINodePods": c.agents}
	if other > 0 {
		ev["otherNodes"] = other
	}
	return []nodecheck.Finding{{
		Code: nodecheck.IstioCNINodeNotReady, Severity: nodecheck.SeverityError, Component: nodecheck.ComponentIstioCNI,
		Message: msg, Evidence: ev,
		Remedy: "Make the istio-cni DaemonSet cover these nodes and become ready there (its nodeSelector and " +
			"tolerations, a stuck rollout: kubectl get pods -A -l k8s-app=istio-cni-node -o wide, then describe and " +
			"read the logs of the one on the node). Until it is ready, pods there start without their traffic " +
			"redirection or fail istio-validation; recreate them once it is.",
	}}
}
