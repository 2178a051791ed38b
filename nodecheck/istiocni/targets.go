package istiocni

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// FromTargets is a PodStates over what pod discovery found on the node: the container runtime's
// view, available while the API server is down. The istio-cni-node pod is the one labelled
// k8s-app=istio-cni-node (Istio's chart) or named istio-cni-node-*. The runtime knows no probe
// results, so "ready" here means every container runs (a crash-looping one has exited and
// restarts); the API server, when wired, tells readiness proper.
func FromTargets(targets []nodecheck.Target) PodStates {
	return targetStates(targets)
}

type targetStates []nodecheck.Target

// IstioCNIAgent picks this node's istio-cni-node pod; with two (a rollout), the one running.
func (ts targetStates) IstioCNIAgent(context.Context) (AgentState, error) {
	var best *AgentState
	for _, t := range ts {
		if t.Labels["k8s-app"] != "istio-cni-node" && !strings.HasPrefix(t.Name, "istio-cni-node-") {
			continue
		}
		a := agentFromTarget(t)
		if best == nil || a.Ready && !best.Ready {
			best = &a
		}
	}
	if best == nil {
		return AgentState{Found: false, Source: "runtime"}, nil
	}
	return *best, nil
}

func agentFromTarget(t nodecheck.Target) AgentState {
	a := AgentState{Found: true, Namespace: t.Namespace, Name: t.Name, Source: "runtime", Ready: len(t.Containers) > 0}
	for _, c := range t.Containers {
		cs := ContainerState{Name: c.Name, State: string(c.State), Reason: c.Reason, RestartCount: int(c.Attempt)}
		switch {
		case c.Role == nodecheck.RoleInit && c.State == nodecheck.ContainerExited && c.ExitCode == 0:
			cs.Ready = true // an init container that completed
		case c.Role != nodecheck.RoleInit && c.State == nodecheck.ContainerRunning:
			cs.Ready = true
		}
		if !cs.Ready {
			a.Ready = false
		}
		a.Containers = append(a.Containers, cs)
	}
	return a
}

// CNIModePods lists the pods injected for CNI mode: istio-validation instead of istio-init, as
// their containers or the injector's sidecar.istio.io/status annotation say.
func (ts targetStates) CNIModePods(context.Context) ([]string, error) {
	var out []string
	for _, t := range ts {
		if t.Name == "" || t.HostNetwork {
			continue
		}
		cni := slices.ContainsFunc(t.Containers, func(c nodecheck.Container) bool { return c.Name == "istio-validation" })
		if !cni {
			var status struct {
				InitContainers []string `json:"initContainers"`
			}
			if json.Unmarshal([]byte(t.Annotations["sidecar.istio.io/status"]), &status) == nil {
				cni = slices.Contains(status.InitContainers, "istio-validation")
			}
		}
		if cni {
			out = append(out, t.Namespace+"/"+t.Name)
		}
	}
	return out, nil
}

// AgentStartedAt is when this node's istio-cni-node pod last came up, from its containers as the
// runtime reports them: the latest start among its running containers, when all run and none
// was restarted (a restart would hide when the install first became ready). ok is false when
// there is no such pod or it cannot tell.
func AgentStartedAt(targets []nodecheck.Target) (at time.Time, ok bool) {
	for _, t := range targets {
		if t.Labels["k8s-app"] != "istio-cni-node" && !strings.HasPrefix(t.Name, "istio-cni-node-") {
			continue
		}
		var latest time.Time
		running := 0
		for _, c := range t.Containers {
			if c.Role == nodecheck.RoleInit {
				continue
			}
			if c.State != nodecheck.ContainerRunning || c.Attempt > 0 || c.StartedAt.IsZero() {
				latest = time.Time{}
				running = -1
				break
			}
			running++
			if c.StartedAt.After(latest) {
				latest = c.StartedAt
			}
		}
		if running > 0 && (!ok || latest.After(at)) {
			at, ok = latest, true
		}
	}
	return at, ok
}

// NetworkedAt is when a pod's network was set up, as near as the runtime tells: the CNI plugins
// run when its sandbox is made, before its first container is created. ok is false without a
// container creation time.
func NetworkedAt(t nodecheck.Target) (at time.Time, ok bool) {
	for _, c := range t.Containers {
		if !c.CreatedAt.IsZero() && (!ok || c.CreatedAt.Before(at)) {
			at, ok = c.CreatedAt, true
		}
	}
	return at, ok
}
