package rootcause

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// annotationSCC is the security context constraint OpenShift admitted a pod under.
const annotationSCC = "openshift.io/scc"

// StrippedCapabilities explains a pod its node reported with InitMissingNetAdmin (istio-init runs
// without CAP_NET_ADMIN or CAP_NET_RAW in its effective set) from the pod as the API server
// admitted it. When the admitted spec asks for the capabilities, they were removed after
// admission, on the way to the runtime; when it does not although Istio injected the pod (its
// injector adds both), a mutating policy removed them at admission. Either way pod security
// blocks istio-init, which no node can tell alone. pod must be the API's object of the same pod
// (same UID); a pod replaced since the report says nothing.
func StrippedCapabilities(rep nodecheck.PodReport, pod *corev1.Pod) (nodecheck.Finding, bool) {
	i := slices.IndexFunc(rep.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.InitMissingNetAdmin })
	if i < 0 || pod == nil || rep.UID != "" && string(pod.UID) != rep.UID {
		return nodecheck.Finding{}, false
	}
	node := rep.Findings[i]
	var init *corev1.Container
	for j := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[j].Name == containerIstioInit {
			init = &pod.Spec.InitContainers[j]
		}
	}
	if init == nil {
		return nodecheck.Finding{}, false
	}
	var add, drop []string
	if sc := init.SecurityContext; sc != nil && sc.Capabilities != nil {
		add, drop = capNames(sc.Capabilities.Add), capNames(sc.Capabilities.Drop)
	}
	missing := stringsOf(node.Evidence["missing"])
	if len(missing) == 0 {
		return nodecheck.Finding{}, false
	}
	asked := true
	for _, m := range missing {
		asked = asked && slices.Contains(add, m)
	}
	if !asked && pod.Annotations[annotationSidecarStatus] == "" {
		// Not written by Istio's injector (which records its work in that annotation): nothing
		// says the capabilities were ever meant to be there; InitMissingNetAdmin says it all.
		return nodecheck.Finding{}, false
	}
	scc := pod.Annotations[annotationSCC]
	ev := map[string]any{
		"pod":                   pod.Namespace + "/" + pod.Name,
		"container":             containerIstioInit,
		"specCapabilitiesAdd":   add,
		"specCapabilitiesDrop":  drop,
		"effectiveCapabilities": stringsOf(node.Evidence["effectiveCapabilities"]),
		"missing":               missing,
	}
	if scc != "" {
		ev["openshiftSCC"] = scc
	}
	caps := strings.Join(missing, " and ")
	f := nodecheck.Finding{Code: nodecheck.PodSecurityBlocksInit, Severity: nodecheck.SeverityError, Evidence: ev}
	if asked {
		ev["removed"] = "after admission"
		f.Message = fmt.Sprintf("istio-init's spec, as the API server admitted it, asks for %s, yet the container runtime "+
			"started it without them: something between admission and the runtime removed them", caps)
		if scc != "" {
			f.Message += fmt.Sprintf(" (the pod was admitted under OpenShift's security context constraint %q)", scc)
		}
		f.Remedy = "Find what removes capabilities on the node after admission (the runtime's or a RuntimeClass " +
			"handler's configuration, an NRI plugin or a node security agent, or on OpenShift the security context " +
			"constraint that admitted the pod) and let istio-init keep NET_ADMIN and NET_RAW; or switch to the " +
			"Istio CNI plugin, which sets up the redirection from the node so that pods need no privileged init " +
			"container. Recreate the pod afterwards."
		return f, true
	}
	ev["removed"] = "at admission"
	f.Message = fmt.Sprintf("istio-init's spec, as the API server admitted it, lacks %s, which Istio's sidecar "+
		"injector gives it: a mutating admission policy or webhook that ran after injection removed them "+
		"(or a custom injection template lacks them)", caps)
	if scc != "" {
		f.Message += fmt.Sprintf("; the pod was admitted under OpenShift's security context constraint %q", scc)
	}
	f.Remedy = "Exempt istio-init from the policy that drops capabilities (a Kyverno or Gatekeeper mutation, a " +
		"webhook ordered after Istio's injector, an OpenShift security context constraint), or switch to the " +
		"Istio CNI plugin, which sets up the redirection from the node so that pods need no NET_ADMIN or NET_RAW " +
		"(the guide's remedy when pod security is restrictive). Recreate the pod afterwards."
	return f, true
}

// capNames spells capabilities as the runtime reports them ("CAP_NET_ADMIN"); a spec may say
// either "NET_ADMIN" or "CAP_NET_ADMIN".
func capNames(cs []corev1.Capability) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		s := strings.ToUpper(string(c))
		if !strings.HasPrefix(s, "CAP_") && s != "ALL" {
			s = "CAP_" + s
		}
		out = append(out, s)
	}
	return out
}

// stringsOf reads a list of strings from evidence, whether it was built in this process
// ([]string) or decoded from a node's JSON report ([]any).
func stringsOf(v any) []string {
	switch v := v.(type) {
	case []string:
		return v
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
