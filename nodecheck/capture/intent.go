package capture

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// sourcePhrase names the intent's source in a message.
func sourcePhrase(s intent.Source) string {
	switch s {
	case intent.SourceInitArgs:
		return "istio-init's arguments"
	case intent.SourceAnnotations:
		return "the pod's annotations"
	}
	return "Istio's defaults"
}

// intentFindings are what the intent itself tells before any rule is read: flags of a newer
// Istio that are not judged, annotations edited after injection, and a proxy whose own traffic
// istio-init did not exclude.
func intentFindings(t nodecheck.Target, in intent.Intent) []nodecheck.Finding {
	var out []nodecheck.Finding
	if in.Init != nil && len(in.Init.Unknown) > 0 {
		out = append(out, nodecheck.Finding{
			Code:     nodecheck.InitArgsUnknownFlag,
			Severity: nodecheck.SeverityWarning,
			Message: fmt.Sprintf("%s was given flags this meshdoctor does not know (%s): the rules are judged on the "+
				"others, and what those flags change is not", in.InitContainer, strings.Join(in.Init.Unknown, ", ")),
			Remedy:   "Use a meshdoctor release that knows this Istio version's istio-iptables flags.",
			Evidence: map[string]any{"container": in.InitContainer, "unknownFlags": in.Init.Unknown},
		})
	}
	if len(in.Drift) > 0 {
		var parts []string
		for _, d := range in.Drift {
			parts = append(parts, fmt.Sprintf("%s=%q but %s %q", d.Annotation, d.AnnotationValue, d.Flag, d.ArgValue))
		}
		judged := "the rules are judged against the arguments"
		if in.Source != intent.SourceInitArgs {
			judged = "the rules are judged against the annotations, which the istio-cni plugin reads"
		}
		out = append(out, nodecheck.Finding{
			Code:     nodecheck.CaptureIntentDrift,
			Severity: nodecheck.SeverityWarning,
			Message: fmt.Sprintf("the pod's annotations say otherwise than %s was told (edited after injection?): %s; %s",
				in.InitContainer, strings.Join(parts, "; "), judged),
			Remedy: "Annotations that decide capture take effect only when the pod is created: restart the pod (or its " +
				"workload) for the edited annotation to apply, or revert the edit.",
			Evidence: map[string]any{"container": in.InitContainer, "drift": in.Drift},
		})
	}
	if f, ok := proxyUIDMismatch(t, in); ok {
		out = append(out, f)
	}
	return out
}

// proxyUIDMismatch compares the user istio-proxy runs as with what istio-init excluded from
// capture (-u, -g). istio-iptables lets the proxy's traffic out by either its UID or its GID: when
// neither matches, Envoy's own outbound connections are captured again (a loop); when one does,
// capture works by the other alone.
func proxyUIDMismatch(t nodecheck.Target, in intent.Intent) (nodecheck.Finding, bool) {
	u := t.ProxyUser
	if in.Source != intent.SourceInitArgs || u == nil || u.UID < 0 || in.Config.Mode == istiopod.ModeNone {
		return nodecheck.Finding{}, false
	}
	uidOK := slices.Contains(in.Config.ProxyUID, strconv.FormatInt(u.UID, 10))
	gidOK := u.GID >= 0 && slices.Contains(in.Config.ProxyGID, strconv.FormatInt(u.GID, 10))
	if uidOK && (gidOK || u.GID < 0) {
		return nodecheck.Finding{}, false
	}
	if in.Config.Mode == istiopod.ModeTProxy && u.UID == 0 && gidOK {
		// Istio's own TPROXY shape: the injector runs istio-proxy as root (transparent sockets
		// need it) in group 1337, and istio-iptables lets it out by that group.
		return nodecheck.Finding{}, false
	}
	f := nodecheck.Finding{
		Code: nodecheck.ProxyUIDMismatch,
		Evidence: map[string]any{
			"proxyUID": u.UID, "proxyGID": u.GID,
			"excludedUIDs": in.Config.ProxyUID, "excludedGIDs": in.Config.ProxyGID,
		},
		Remedy: "istio-init's -u comes from the injector's ProxyUID (1337 unless set in the injection values or by the " +
			"platform: OpenShift assigns each namespace its own UID range), istio-proxy's user from its securityContext " +
			"or the pod's runAsUser. Make them the same (set the injector's proxy UID to the user istio-proxy runs as, " +
			"or drop the pod-level runAsUser that overrides istio-proxy's), then restart the pod.",
	}
	if !uidOK && !gidOK {
		f.Severity = nodecheck.SeverityError
		f.Message = fmt.Sprintf("istio-proxy runs as %d:%d but istio-init excluded only UID %s / GID %s from capture: "+
			"the proxy's own outbound traffic is captured again and loops back into Envoy",
			u.UID, u.GID, strings.Join(in.Config.ProxyUID, ","), strings.Join(in.Config.ProxyGID, ","))
		return f, true
	}
	f.Severity = nodecheck.SeverityWarning
	f.Message = fmt.Sprintf("istio-proxy runs as %d:%d while istio-init excluded UID %s / GID %s: the proxy's traffic "+
		"escapes capture by one of the two alone", u.UID, u.GID, strings.Join(in.Config.ProxyUID, ","), strings.Join(in.Config.ProxyGID, ","))
	return f, true
}
