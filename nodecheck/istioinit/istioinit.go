// Package istioinit explains why Istio's init container did not set up a pod's traffic capture.
//
// It reads what the container runtime says of the pod: istio-init (or istio-validation, in CNI
// mode) exited non-zero or keeps restarting (InitContainerFailed), or istio-init runs without
// CAP_NET_ADMIN / CAP_NET_RAW in its effective capabilities and cannot write iptables rules
// (InitMissingNetAdmin). In CNI mode the rules are the istio-cni plugin's work: its findings name
// that component, so a reporter can join them with the node-level istio-cni findings.
//
// It is a pure function of the Target discovery built: it reads nothing on the node.
package istioinit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// ValidationFailedExitCode is what Istio's istio-iptables exits with when its validation finds
// that redirection does not work (istio-validation in CNI mode; istio-init with --run-validation).
const ValidationFailedExitCode = 126

// Capabilities istio-init needs to write iptables rules in the pod's namespace.
var requiredCapabilities = []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}

// Check is the init-container check.
type Check struct{}

// Name is the check's name in metrics and reports.
func (Check) Name() string { return "istio-init" }

// Detail is the init containers the check looked at, for the debug endpoint.
type Detail struct {
	Containers []nodecheck.Container `json:"containers"`
}

// Check diagnoses the pod's istio-init and istio-validation containers. A target without
// containers (a bare --netns) has nothing to say.
func (Check) Check(_ context.Context, t nodecheck.Target) (nodecheck.Result, error) {
	var res nodecheck.Result
	var detail Detail
	for _, name := range []string{istiopod.ContainerIstioInit, istiopod.ContainerIstioValidation} {
		c := t.Container(name)
		if c == nil {
			continue
		}
		detail.Containers = append(detail.Containers, *c)
		if name == istiopod.ContainerIstioInit {
			if f, ok := missingNetAdmin(*c); ok {
				res.Findings = append(res.Findings, f)
			}
		}
		if f, ok := failed(*c); ok {
			res.Findings = append(res.Findings, f)
		}
	}
	if len(detail.Containers) > 0 {
		res.Detail = detail
	}
	return res, nil
}

// missingNetAdmin reports istio-init running without the capabilities iptables needs.
func missingNetAdmin(c nodecheck.Container) (nodecheck.Finding, bool) {
	if c.Capabilities == nil {
		return nodecheck.Finding{}, false // the runtime did not give the spec: cannot tell
	}
	var missing []string
	for _, want := range requiredCapabilities {
		if !slices.Contains(c.Capabilities, want) {
			missing = append(missing, want)
		}
	}
	if len(missing) == 0 {
		return nodecheck.Finding{}, false
	}
	return nodecheck.Finding{
		Code:     nodecheck.InitMissingNetAdmin,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("istio-init runs without %s in its effective capabilities: it cannot write the pod's "+
			"iptables rules", strings.Join(missing, " and ")),
		Remedy: "istio-init needs CAP_NET_ADMIN and CAP_NET_RAW (Istio's injector adds them to its securityContext). " +
			"Something removed them: a pod security policy or admission controller, a mutating webhook, or a " +
			"custom injection template. Grant them to istio-init, or switch to the Istio CNI plugin, which sets up " +
			"the redirection from the node so that pods need no privileged init container.",
		Evidence: map[string]any{
			"container":             c.Name,
			"effectiveCapabilities": c.Capabilities,
			"missing":               missing,
		},
	}, true
}

// failed reports an init container that exited non-zero, or that kubelet is restarting after
// failures (attempt > 0 and not yet through).
func failed(c nodecheck.Container) (nodecheck.Finding, bool) {
	exitedBad := c.State == nodecheck.ContainerExited && c.ExitCode != 0
	restarting := c.Attempt > 0 && !(c.State == nodecheck.ContainerExited && c.ExitCode == 0)
	if !exitedBad && !restarting {
		return nodecheck.Finding{}, false
	}
	cni := c.Name == istiopod.ContainerIstioValidation
	evidence := map[string]any{
		"container": c.Name,
		"state":     c.State,
		"attempt":   c.Attempt,
	}
	var what []string
	if exitedBad {
		evidence["exitCode"] = c.ExitCode
		if c.Reason != "" {
			evidence["reason"] = c.Reason
		}
		if !c.FinishedAt.IsZero() {
			evidence["finishedAt"] = c.FinishedAt.Format(time.RFC3339)
		}
		s := fmt.Sprintf("%s exited with code %d", c.Name, c.ExitCode)
		if !c.FinishedAt.IsZero() {
			s += " at " + c.FinishedAt.Format(time.RFC3339)
		}
		if c.ExitCode == ValidationFailedExitCode {
			s += " (126: Istio's validation found that traffic redirection does not work)"
		}
		what = append(what, s)
	} else {
		what = append(what, fmt.Sprintf("%s is %s", c.Name, c.State))
	}
	if c.Attempt > 0 {
		what = append(what, fmt.Sprintf("restarted %d time(s): kubelet retries it after failures", c.Attempt))
	}
	f := nodecheck.Finding{
		Code:     nodecheck.InitContainerFailed,
		Severity: nodecheck.SeverityError,
		Message:  strings.Join(what, ", "),
		Evidence: evidence,
	}
	switch {
	case cni:
		f.Component = nodecheck.ComponentIstioCNI
		f.Message += "; in CNI mode the istio-cni plugin sets up the pod's redirection and istio-validation only checks it"
		f.Remedy = "The istio-cni plugin did not set up this pod's traffic redirection when the pod's network was " +
			"created. Check that the istio-cni-node pod on this node is ready and read its logs, check that the " +
			"node's CNI configuration chains istio-cni, and look for nsenter errors in the node's logs. Once " +
			"istio-cni is healthy, delete the pod so it is created again through the plugin."
	case c.ExitCode == ValidationFailedExitCode:
		f.Remedy = "istio-init ran Istio's validation and redirection does not work in the pod. Read its logs " +
			"(kubectl logs POD -c istio-init --previous) and compare the rules in the pod with what its " +
			"annotations call for; restart the pod once the cause is fixed."
	default:
		f.Remedy = "istio-init could not apply the pod's iptables rules. Read its logs (kubectl logs POD -c istio-init " +
			"--previous): a missing CAP_NET_ADMIN/NET_RAW, a pod security policy that forbids them (switch to the " +
			"Istio CNI plugin), an iptables binary that does not match the node's backend, or an incomplete istio-cni " +
			"install are the usual causes. Restart the pod once fixed."
	}
	return f, true
}
