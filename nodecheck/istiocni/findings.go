package istiocni

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
)

// Remedies, after the guide: if you use the Istio CNI plugin, verify you followed the install
// instructions, that istio-cni-node is ready, and read its logs.
const (
	remedyInstall = "Install or repair istio-cni on this node as the Istio CNI installation " +
		"instructions say (istioctl/Helm with the CNI component enabled, the platform's CNI conf and " +
		"bin dirs set to this node's): the istio-cni-node DaemonSet pod writes the plugin binary, " +
		"chains istio-cni into the primary CNI config and writes its kubeconfig. Check that " +
		"istio-cni-node is ready on this node and read its logs; pods created while the install " +
		"was incomplete must be recreated."
	remedyNotInstalled = "Pods on this node are injected for the Istio CNI plugin (istio-validation " +
		"instead of istio-init), so nothing sets up their traffic redirection: install istio-cni " +
		"(enable the CNI component so the istio-cni-node DaemonSet runs on this node) and recreate " +
		"those pods, or inject them with istio-init (which needs CAP_NET_ADMIN)."
	remedyNotReady = "Check the istio-cni-node pod on this node: kubectl -n <namespace> describe pod " +
		"and kubectl logs -c install-cni. While it is not ready, new pods may start without their " +
		"iptables rules (or not start at all); recreate the pods created meanwhile once it is ready."
)

// Findings turns an inspected state into findings.
func Findings(st *State) []nodecheck.Finding {
	var out []nodecheck.Finding
	primaryBroken, broken := "", ""
	if len(st.ConfigFiles) > 0 && st.ConfigFiles[0].Error != "" {
		primaryBroken, broken = st.ConfigFiles[0].Error, st.ConfigFiles[0].File
	}
	// go-cni refuses every file it loads when one of them does not load.
	for _, cf := range st.ConfigFiles {
		if primaryBroken == "" && cf.Error != "" && slices.Contains(st.InUse, cf.File) {
			primaryBroken, broken = cf.Error, cf.File
		}
	}
	anyPart := st.Chained || len(st.IstioElsewhere) > 0 || st.Binary.Present || st.Kubeconfig.Present ||
		st.Agent != nil && st.Agent.Found
	ev := evidence(st)

	switch {
	case !anyPart && primaryBroken == "":
		sev := nodecheck.SeverityInfo
		msg := "istio-cni is not installed on this node (no CNI config chains it, no plugin binary, no kubeconfig)"
		remedy := "Nothing to do unless pods here are meant to use the Istio CNI plugin."
		if len(st.CNIModePods) > 0 {
			sev, remedy = nodecheck.SeverityError, remedyNotInstalled
			msg = fmt.Sprintf("%s, yet %d pod(s) here rely on it: %s", msg, len(st.CNIModePods), listSome(st.CNIModePods))
		}
		if st.Multus {
			msg += "; the primary CNI config is multus, where istio-cni is attached by NetworkAttachmentDefinition (not read here)"
		}
		out = append(out, nodecheck.Finding{Code: nodecheck.IstioCNINotInstalled, Severity: sev, Message: msg, Remedy: remedy, Evidence: ev})
	default:
		var missing []string
		switch {
		case primaryBroken != "" && broken == st.Primary:
			missing = append(missing, fmt.Sprintf("the primary CNI config %s is unreadable (%s): containerd refuses to load the CNI config, and istio-cni's installer cannot chain into it",
				filepath.Base(st.Primary), primaryBroken))
		case primaryBroken != "":
			missing = append(missing, fmt.Sprintf("the CNI config %s, one of the %s containerd loads (max_conf_num %d), is unreadable (%s): containerd refuses to load any of them",
				filepath.Base(broken), baseNames(st.InUse), st.Runtime.MaxConfNum, primaryBroken))
		case !st.Chained && !st.Multus:
			m := fmt.Sprintf("the primary CNI config %s does not chain the istio-cni plugin", filepath.Base(st.Primary))
			if len(st.InUse) > 1 {
				m = fmt.Sprintf("none of the CNI configs the runtime loads (%s: containerd's max_conf_num is %d) chains the istio-cni plugin",
					baseNames(st.InUse), st.Runtime.MaxConfNum)
			}
			if st.Primary == "" {
				m = "there is no CNI config in " + st.ConfDir
			}
			switch {
			case len(st.IstioElsewhere) == 0:
			case st.Runtime.Loads() == 1:
				m += fmt.Sprintf(" (it is in %s, which the runtime does not use: only the first file in name order is)", baseNames(st.IstioElsewhere))
			default:
				m += fmt.Sprintf(" (it is in %s, which the runtime does not use: only the first %d files in name order are)", baseNames(st.IstioElsewhere), st.Runtime.Loads())
			}
			missing = append(missing, m)
		}
		switch {
		case !st.Binary.Present && st.Binary.Problem == "":
			missing = append(missing, fmt.Sprintf("the plugin binary %s is missing (the runtime fails with: failed to find plugin \"istio-cni\")", st.Binary.Path))
		case st.Binary.Problem != "":
			missing = append(missing, fmt.Sprintf("the plugin binary %s is unusable: %s", st.Binary.Path, st.Binary.Problem))
		}
		switch {
		case st.Kubeconfig.Path == "":
		case !st.Kubeconfig.Present && st.Kubeconfig.Problem == "":
			missing = append(missing, fmt.Sprintf("the plugin's kubeconfig %s is missing (the plugin cannot look pods up)", st.Kubeconfig.Path))
		case st.Kubeconfig.Problem != "":
			missing = append(missing, fmt.Sprintf("the plugin's kubeconfig %s is unusable: %s", st.Kubeconfig.Path, st.Kubeconfig.Problem))
		}
		if len(missing) > 0 {
			out = append(out, nodecheck.Finding{
				Code: nodecheck.IstioCNIIncomplete, Severity: nodecheck.SeverityError,
				Message:  "istio-cni is installed incompletely on this node: " + strings.Join(missing, "; "),
				Remedy:   remedyInstall,
				Evidence: ev,
			})
		}
	}

	if f, ok := runtimeDirFinding(st, ev); ok {
		out = append(out, f)
	}
	if f, ok := readinessFinding(st, anyPart, ev); ok {
		out = append(out, f)
	}
	return out
}

// runtimeDirFinding reports a CNI config directory other than the one the runtime reads: istio-cni
// chained there networks no pod (an error), and what this check says of it is not the runtime's.
func runtimeDirFinding(st *State, ev map[string]any) (nodecheck.Finding, bool) {
	if st.Runtime == nil || filepath.Clean(st.Runtime.ConfDir) == filepath.Clean(st.ConfDir) {
		return nodecheck.Finding{}, false
	}
	f := nodecheck.Finding{
		Code: nodecheck.IstioCNIIncomplete, Severity: nodecheck.SeverityWarning,
		Message: fmt.Sprintf("the CNI config read here is in %s, but %s (%s) reads its CNI config from %s: what is said of %s is not what networks pods",
			st.ConfDir, st.Runtime.Runtime, st.Runtime.ConfigFile, st.Runtime.ConfDir, st.ConfDir),
		Remedy:   fmt.Sprintf("Run meshdoctor with --cni-conf-dir naming %s (the DaemonSet: hostPaths.cniConfDir).", st.Runtime.ConfDir),
		Evidence: ev,
	}
	if st.Chained {
		f.Severity = nodecheck.SeverityError
		f.Message = fmt.Sprintf("istio-cni is chained in the CNI config of %s, but %s (%s) reads its CNI config from %s: no pod on this node goes through istio-cni",
			st.ConfDir, st.Runtime.Runtime, st.Runtime.ConfigFile, st.Runtime.ConfDir)
		f.Remedy = fmt.Sprintf("istio-cni was installed into a directory the runtime does not read. Set istio-cni's CNI config directory "+
			"to the runtime's (Helm: cni.cniConfDir=%s; k3s, RKE2, MicroK8s and some managed platforms use their own), let "+
			"istio-cni-node re-install, then restart the pods created meanwhile: they were never captured.", st.Runtime.ConfDir)
	}
	return f, true
}

func readinessFinding(st *State, anyPart bool, ev map[string]any) (nodecheck.Finding, bool) {
	if st.Agent == nil {
		return nodecheck.Finding{}, false // unknown: no pod-state source
	}
	f := nodecheck.Finding{Code: nodecheck.IstioCNINodeNotReady, Severity: nodecheck.SeverityError, Remedy: remedyNotReady, Evidence: ev}
	switch {
	case !st.Agent.Found && (anyPart || len(st.CNIModePods) > 0):
		f.Message = "no istio-cni-node pod runs on this node although istio-cni is (partly) installed or pods here rely on it: nothing repairs the install or relays the plugin's logs"
		if len(st.CNIModePods) > 0 {
			f.Message += fmt.Sprintf("; pods relying on it: %s", listSome(st.CNIModePods))
		}
		return f, true
	case st.Agent.Found && !st.Agent.Ready:
		var why []string
		for _, c := range st.Agent.Containers {
			if c.Ready {
				continue
			}
			s := c.Name + " " + c.State
			if c.Reason != "" {
				s += " (" + c.Reason + ")"
			}
			if c.RestartCount > 0 {
				s += fmt.Sprintf(", %d restarts", c.RestartCount)
			}
			why = append(why, s)
		}
		f.Message = fmt.Sprintf("the istio-cni-node pod %s/%s on this node is not ready", st.Agent.Namespace, st.Agent.Name)
		if len(why) > 0 {
			f.Message += ": " + strings.Join(why, "; ")
		}
		return f, true
	}
	return nodecheck.Finding{}, false
}

// evidence is the state as the findings' evidence, without the parts that say nothing.
func evidence(st *State) map[string]any {
	ev := map[string]any{
		"confDir":    st.ConfDir,
		"primary":    st.Primary,
		"chained":    st.Chained,
		"binary":     st.Binary,
		"kubeconfig": st.Kubeconfig,
		"readiness":  st.Readiness,
	}
	if len(st.ConfigFiles) > 0 {
		ev["configFiles"] = st.ConfigFiles
	}
	if len(st.IstioElsewhere) > 0 {
		ev["istioElsewhere"] = st.IstioElsewhere
	}
	if len(st.InUse) > 0 {
		ev["inUse"] = st.InUse
	}
	if st.ChainedIn != "" {
		ev["chainedIn"] = st.ChainedIn
	}
	if st.Multus {
		ev["multus"] = true
	}
	if st.Runtime != nil {
		ev["runtime"] = st.Runtime
	}
	if st.Agent != nil {
		ev["agent"] = st.Agent
	}
	if len(st.CNIModePods) > 0 {
		ev["cniModePods"] = st.CNIModePods
	}
	if st.PodsError != "" {
		ev["podsError"] = st.PodsError
	}
	// The chain's recent history, when it had istio-cni missing at some point: what `check` (from
	// modification times) or the agent (as it happened) knows of when the chain broke.
	if slices.ContainsFunc(st.ChainTimeline, func(c cnichain.Change) bool { return c.Chain == cnichain.Unchained }) {
		tl := st.ChainTimeline
		if len(tl) > maxTimelineInEvidence {
			tl = tl[len(tl)-maxTimelineInEvidence:]
		}
		ev["chainTimeline"] = tl
	}
	return ev
}

// maxTimelineInEvidence bounds the chain history a finding carries (events and annotations stay
// small); the istio-cni node detail on the debug endpoint has all of it.
const maxTimelineInEvidence = 10

func listSome(names []string) string {
	const n = 5
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}

func baseNames(paths []string) string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return strings.Join(out, ", ")
}
