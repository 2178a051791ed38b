// Package capture verifies a pod's traffic-capture rules.
//
// # Expected rules
//
// It builds the rule set Istio's writer (istio-init, the istio-cni plugin, istio-cni's ambient
// node agent) produces from the pod's capture intent (nodecheck/intent: istio-init's argv and env,
// the annotations in CNI mode, Istio's defaults), for sidecar REDIRECT and TPROXY and ambient's
// in-pod rules, written with iptables or native nftables.
//
// # Comparison and findings
//
// The expected rules are compared by meaning with those read from the pod's network namespace in
// every backend and family. What is wrong is named with its evidence and the remedy of Istio's
// troubleshooting guide: rules missing, incomplete, written for another configuration, split
// across iptables backends; and what the intent itself says (a proxy user istio-init did not
// exclude, an annotation edited after injection, a flag of a newer Istio).
package capture

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiocni"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// RuleReader reads a network namespace's capture rules without changing anything in it.
type RuleReader interface {
	ReadRules(ctx context.Context, netnsPath string) (rules.Snapshot, error)
}

// Check is the capture-rule check. NodeBackend, when known, is the iptables backend the node itself
// uses (where kube-proxy's rules are); rules in the other one are worth a warning.
type Check struct {
	Reader      RuleReader
	NodeBackend rules.Backend
	// Traffic, when set, proves rules that verify by sending canaries (nodecheck/canary): the
	// capture is then verified by rules and traffic, or CaptureBypassed.
	Traffic TrafficProber
	// Kernel, when set, is asked what the node's kernel lacks when a pod's rules are missing or
	// incomplete: a feature the pod's capture needs is their root cause (NetfilterFeatureMissing).
	Kernel KernelFeatures
	// AmbientHost, when set, is asked for istio-cni's node side of ambient capture (the probe sets
	// and SNAT rule) once an ambient pod's in-pod rules verify.
	AmbientHost AmbientHost
	// NodeNetns is the node's network namespace, where inbound canaries are sent from to a
	// sidecar pod's IP; empty, inbound capture is proven by its rules only.
	NodeNetns string
	// Readiness, when set, is asked whether a sidecar pod's proxy is ready when nothing listens
	// behind its verified rules: a ready proxy without its listeners is CaptureTargetNotListening.
	Readiness ProxyReadiness

	expected expectedCache
}

// Name is the check's name in metrics and reports.
func (c *Check) Name() string { return "capture" }

// Detail is what the capture check hands the debug endpoint: the comparison and the raw rules.
type Detail struct {
	Config intent.Config `json:"config"`
	// Intent is where the configuration came from, what the init container was told, and where
	// the pod's annotations disagree with it.
	Intent   *intent.Intent `json:"intent,omitempty"`
	Families []FamilyDiff   `json:"families"`
	// Host is what was found of an ambient pod's node side (probe set, probe SNAT).
	Host *HostProof `json:"host,omitempty"`
	// Listeners is what was found of the sockets behind a sidecar pod's verified rules.
	Listeners *ListenerProof `json:"listeners,omitempty"`
	// Traffic is what the canaries showed, when they ran.
	Traffic *TrafficProof `json:"traffic,omitempty"`
	// Raw is each rule set read, in iptables-save syntax, keyed "backend/family".
	Raw map[string]string `json:"raw"`
}

// Check reads the target's rules and diagnoses them.
func (c *Check) Check(ctx context.Context, t nodecheck.Target) (nodecheck.Result, error) {
	in, err := intent.Resolve(t)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading the capture configuration of %s: %w", t.ID(), err)
	}
	cfg := in.Config
	if istiopod.AmbientEnrolled(t) && !istiopod.Injected(t) {
		return c.checkAmbient(ctx, t, cfg)
	}
	res := nodecheck.Result{Capture: &nodecheck.Capture{Mode: modeName(cfg), Backend: "none", Intent: string(in.Source)}}
	res.Findings = intentFindings(t, in)
	if cfg.Mode == istiopod.ModeNone {
		return res, nil
	}
	snap, err := c.Reader.ReadRules(ctx, t.Netns)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading capture rules of %s: %w", t.ID(), err)
	}
	detail := Detail{Config: cfg, Intent: &in, Raw: map[string]string{}}
	for _, s := range snap.Sets {
		detail.Raw[string(s.Backend)+"/"+s.Family.String()] = s.Save()
	}
	if f, wrong, err := netnsNotPods(t, snap.Addrs); err != nil {
		return nodecheck.Result{}, err
	} else if wrong {
		res.Detail = detail
		res.Findings = append(res.Findings, f)
		return res, nil
	}
	res.Capture.VerifiedBy = nodecheck.VerifiedByRules
	// IPv6 capture is meant when the pod's addresses and the intent call for it, or when Istio's
	// IPv6 chains are there: they were written on purpose, so what is missing of them is a partial
	// IPv6 capture, not a set of unexpected rules.
	sets := dropInetProjection(snap.Sets)
	v6 := ExpectIPv6(cfg, snap.Addrs) || hasIstioRules(sets, rules.IPv6)
	if v6 {
		sets = snap.Sets
	}
	diffs := []FamilyDiff{
		Compare(c.expected.get(cfg, rules.IPv4, true), sets),
		Compare(c.expected.get(cfg, rules.IPv6, v6), sets),
	}
	detail.Families = diffs
	res.Detail = detail
	res.Capture.Backend = backendName(diffs)
	res.Findings = append(res.Findings, c.diagnose(cfg, diffs, snap, in.Source)...)
	if t.CNIExcluded != "" && cfg.CNIMode {
		excludedByCNI(res.Findings, t.CNIExcluded)
	}
	if f, ok := notInChain(t, cfg, res.Findings); ok {
		res.Findings = append(res.Findings, f)
	}
	if f, ok := createdBeforeIstioCNI(t, cfg, res.Findings); ok {
		res.Findings = append(res.Findings, f)
	}
	if cfg.Mode == istiopod.ModeTProxy {
		if f, ok := tproxyRouting(cfg, diffs, snap); ok {
			res.Findings = append(res.Findings, f)
		}
	}
	if f, ok := c.kernelCause(ctx, sidecarKinds(cfg, c.NodeBackend), res.Findings); ok {
		res.Findings = append(res.Findings, f)
	}
	if !hasSeverity(res.Findings, nodecheck.SeverityError) {
		proof, f, bad, err := sidecarListeners(ctx, c.Readiness, t, cfg, snap)
		if err != nil {
			return nodecheck.Result{}, fmt.Errorf("checking the listeners behind the capture of %s: %w", t.ID(), err)
		}
		detail.Listeners = proof
		res.Detail = detail
		if bad {
			res.Findings = append(res.Findings, f)
		}
	}
	if c.Traffic != nil && !hasSeverity(res.Findings, nodecheck.SeverityError) {
		families := canaryFamilies(snap.Addrs, v6)
		plan, notPlanned := sidecarCanaries(cfg, families)
		inbound, inboundNotPlanned := sidecarInboundCanary(cfg, t.IP, families, c.NodeNetns)
		if inbound.inbound {
			plan = append(plan, inbound)
		}
		c.addTrafficProof(ctx, t, &res, &detail, plan, trafficNotPlanned{notPlanned, inboundNotPlanned}, snap)
		res.Detail = detail
	}
	return res, nil
}

// trafficNotPlanned says why canaries were not planned: outbound, inbound.
type trafficNotPlanned struct{ outbound, inbound string }

// addTrafficProof runs the planned canaries and records what they proved in res and detail.
func (c *Check) addTrafficProof(ctx context.Context, t nodecheck.Target, res *nodecheck.Result, detail *Detail, plan []plannedProbe, notPlanned trafficNotPlanned, snap rules.Snapshot) {
	proof := TrafficProof{NotProven: notPlanned.outbound, InboundNotProven: notPlanned.inbound}
	if len(plan) > 0 {
		var verified bool
		var findings []nodecheck.Finding
		proof, findings, verified = c.proveByTraffic(ctx, t.Netns, plan, snap)
		if proof.NotProven == "" {
			proof.NotProven = notPlanned.outbound
		}
		if proof.InboundNotProven == "" {
			proof.InboundNotProven = notPlanned.inbound
		}
		res.Findings = append(res.Findings, findings...)
		if verified {
			res.Capture.VerifiedBy = nodecheck.VerifiedByTraffic
		}
	}
	detail.Traffic = &proof
}

func modeName(cfg intent.Config) string {
	switch cfg.Mode {
	case istiopod.ModeTProxy:
		return "sidecar-tproxy"
	case istiopod.ModeNone:
		return "none"
	}
	return "sidecar-redirect"
}

func backendName(diffs []FamilyDiff) string {
	seen := map[rules.Backend]bool{}
	for _, d := range diffs {
		for _, b := range d.Backends {
			seen[b] = true
		}
	}
	switch len(seen) {
	case 0:
		return "none"
	case 1:
		for b := range seen {
			return string(b)
		}
	}
	return "mixed"
}

func (c *Check) diagnose(cfg intent.Config, diffs []FamilyDiff, snap rules.Snapshot, source intent.Source) []nodecheck.Finding {
	var findings []nodecheck.Finding
	var missingFamilies []string
	var incomplete, mismatch []map[string]any
	for _, d := range diffs {
		if !d.ExpectedNone && len(d.Backends) == 0 {
			missingFamilies = append(missingFamilies, d.Family.String())
			continue
		}
		if len(d.Backends) > 1 {
			findings = append(findings, backendSplit(d))
		}
		var lost, other []ChainDiff
		for _, cd := range d.Chains {
			if cd.Absent || len(cd.Missing) > 0 {
				lost = append(lost, cd)
			}
			if len(cd.Changed) > 0 || len(cd.Extra) > 0 || cd.OutOfOrder {
				other = append(other, cd)
			}
		}
		if len(lost) > 0 {
			incomplete = append(incomplete, diffEvidence(d, lost))
		}
		if len(other) > 0 {
			mismatch = append(mismatch, diffEvidence(d, other))
		}
		if c.NodeBackend != "" && d.Compared != "" && d.Compared != c.NodeBackend &&
			!(d.Compared == rules.BackendNative && c.NodeBackend == rules.BackendNft) {
			findings = append(findings, nodecheck.Finding{
				Code:     nodecheck.IptablesBackendMismatch,
				Severity: nodecheck.SeverityWarning,
				Message: fmt.Sprintf("the pod's %s capture rules are in %s while the node uses %s",
					d.Family, d.Compared, c.NodeBackend),
				Remedy: "Capture works while every rule is in one backend, but tools that read the other " +
					"backend (and Istio's own backend detection) will not see these rules. Use an istio-init / " +
					"istio-cni image whose iptables matches the node's backend.",
				Evidence: map[string]any{"family": d.Family.String(), "podBackend": d.Compared, "nodeBackend": c.NodeBackend},
			})
		}
	}
	if len(missingFamilies) > 0 {
		findings = append(findings, missingFinding(cfg, missingFamilies, snap))
	}
	if len(incomplete) > 0 {
		findings = append(findings, nodecheck.Finding{
			Code:     nodecheck.RedirectRulesIncomplete,
			Severity: nodecheck.SeverityError,
			Message:  "part of the pod's capture rules is gone: " + summaries(incomplete),
			Remedy: "Rules were deleted or a chain flushed after they were written, or the writer was interrupted. " +
				"Restart the pod so istio-init (or the istio-cni plugin) writes them again, and look for what " +
				"changes iptables inside pod namespaces on this node (another CNI plugin, a node agent, a manual command).",
			Evidence: map[string]any{"families": incomplete},
		})
	}
	if len(mismatch) > 0 {
		findings = append(findings, nodecheck.Finding{
			Code:     nodecheck.RedirectRulesMismatch,
			Severity: nodecheck.SeverityError,
			Message:  "the pod's capture rules differ from what " + sourcePhrase(source) + " call for: " + summaries(mismatch),
			Remedy: "The rules were written for another configuration (annotations changed after the pod started, " +
				"another Istio version) or were altered afterwards. Restart the pod so its rules are written from " +
				"its current annotations; if they still differ, compare the istio-init arguments with the annotations.",
			Evidence: map[string]any{"families": mismatch},
		})
	}
	return findings
}

func diffEvidence(d FamilyDiff, chains []ChainDiff) map[string]any {
	return map[string]any{"family": d.Family.String(), "backend": d.Compared, "chains": chains}
}

func summaries(ev []map[string]any) string {
	var parts []string
	for _, e := range ev {
		for _, cd := range e["chains"].([]ChainDiff) {
			parts = append(parts, fmt.Sprintf("%s %s %s", e["family"], e["backend"], cd.summary()))
		}
	}
	return strings.Join(parts, "; ")
}

func backendSplit(d FamilyDiff) nodecheck.Finding {
	var names []string
	for _, b := range d.Backends {
		names = append(names, string(b))
	}
	return nodecheck.Finding{
		Code:     nodecheck.IptablesBackendMismatch,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("Istio's %s capture rules are split across backends: %s", d.Family,
			strings.Join(names, ", ")),
		Remedy: "Two writers used different iptables backends in this pod (e.g. istio-init with iptables-legacy " +
			"and a later writer with iptables-nft). The kernel runs both, so capture depends on which NAT rule wins. " +
			"Restart the pod after making every writer (istio-init, istio-cni, other CNI plugins) use the node's backend.",
		Evidence: map[string]any{"family": d.Family.String(), "backends": d.Backends},
	}
}

func missingFinding(cfg intent.Config, families []string, snap rules.Snapshot) nodecheck.Finding {
	// Say which tables exist (empty ones are what Istio's backend probing leaves) so a reader can
	// tell "never written" from "written elsewhere".
	var tables []string
	for _, s := range snap.Sets {
		for _, t := range s.Tables {
			tables = append(tables, fmt.Sprintf("%s %s %s (%d rules)", s.Backend, s.Family, t.Name, t.RuleCount()))
		}
	}
	sort.Strings(tables)
	writer, component := "istio-init", ""
	remedy := "istio-init did not apply the pod's iptables rules to its network namespace. Read its exit state " +
		"and logs (kubectl logs POD -c istio-init). The usual causes: a pod security policy that forbids " +
		"CAP_NET_ADMIN (switch to the Istio CNI plugin), missing CAP_NET_ADMIN/NET_RAW on istio-init (the " +
		"injector sets it; something stripped it), or an incomplete istio-cni install. Restart the pod once fixed."
	switch {
	case cfg.Ambient != nil:
		writer, component = "the istio-cni node agent (ambient mode)", nodecheck.ComponentIstioCNI
		remedy = "In ambient mode the istio-cni node agent on this node enters the pod's network namespace and " +
			"writes these rules when the pod starts, then annotates it ambient.istio.io/redirection: enabled. Check " +
			"that the istio-cni-node pod on this node is ready and read its logs (it names pods it failed to " +
			"enrol), check that ztunnel runs on this node, and restart the pod once both are healthy."
	case cfg.CNIMode:
		writer, component = "the istio-cni plugin", nodecheck.ComponentIstioCNI
		remedy = "The istio-cni plugin did not write the pod's rules. Check that the istio-cni-node pod on this " +
			"node is ready and read its logs, check that the CNI configuration chains istio-cni, and look for " +
			"nsenter errors in the node's logs. Restart the pod once istio-cni is healthy."
	}
	return nodecheck.Finding{
		Code:     nodecheck.RedirectRulesMissing,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("no Istio capture rules in the pod's network namespace (%s): %s never wrote them or they were removed",
			strings.Join(families, ", "), writer),
		Remedy:    remedy,
		Evidence:  map[string]any{"families": families, "tablesFound": tables},
		Component: component,
	}
}

// notInChain is IstioCNINotInChain for a CNI-mode pod whose rules are missing on a multus node
// where its annotation does not attach istio-cni: the plugin never ran for it.
func notInChain(t nodecheck.Target, cfg intent.Config, findings []nodecheck.Finding) (nodecheck.Finding, bool) {
	if t.CNINotInChain == "" || !cfg.CNIMode || !slices.ContainsFunc(findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.RedirectRulesMissing }) {
		return nodecheck.Finding{}, false
	}
	return nodecheck.Finding{
		Code:     nodecheck.IstioCNINotInChain,
		Severity: nodecheck.SeverityError,
		Message:  "istio-cni is not in this pod's CNI chain: " + t.CNINotInChain + "; so nothing wrote its capture rules",
		Remedy: "In Istio's multus provider mode (values.cni.provider=multus, OpenShift) the injector adds default/istio-cni to the " +
			"pod's k8s.v1.cni.cncf.io/networks annotation, and a NetworkAttachmentDefinition named istio-cni must exist in that " +
			"namespace. Re-inject the pod (restart it, or check that the injector's pilot.cni.provider is multus), keep istio-cni " +
			"in the annotation when another tool rewrites it, and check the NetworkAttachmentDefinition.",
		Evidence:  map[string]any{"why": t.CNINotInChain, "annotation": t.Annotations["k8s.v1.cni.cncf.io/networks"]},
		Component: nodecheck.ComponentIstioCNI,
	}, true
}

// createdBeforeIstioCNI is PodCreatedBeforeIstioCNI for a CNI-mode pod whose rules are missing and
// whose network was set up while istio-cni was not in the node's CNI chain: in a window of the
// chain's history without it (another CNI rewrote the primary config), or before the node's
// istio-cni-node came up (the boot race of new and autoscaled nodes). A pod whose missing rules
// another cause already explains is not said to be one: istio-cni skips a pod of a namespace it
// excludes, and never runs for one multus does not attach it to (IstioCNINotInChain), however
// late they were networked, so restarting the pod, this finding's remedy, would not help them.
func createdBeforeIstioCNI(t nodecheck.Target, cfg intent.Config, findings []nodecheck.Finding) (nodecheck.Finding, bool) {
	if !cfg.CNIMode || !slices.ContainsFunc(findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.RedirectRulesMissing }) {
		return nodecheck.Finding{}, false
	}
	if t.CNIExcluded != "" || slices.ContainsFunc(findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.IstioCNINotInChain }) {
		return nodecheck.Finding{}, false
	}
	networked, ok := istiocni.NetworkedAt(t)
	if !ok {
		return nodecheck.Finding{}, false
	}
	f := nodecheck.Finding{
		Code:      nodecheck.PodCreatedBeforeIstioCNI,
		Severity:  nodecheck.SeverityError,
		Evidence:  map[string]any{"podNetworkedAt": networked.UTC().Format(time.RFC3339Nano)},
		Component: nodecheck.ComponentIstioCNI,
	}
	if g := t.CNIChainGap; g != nil {
		until := "and still does not"
		if !g.Until.IsZero() {
			until = "until " + g.Until.UTC().Format(time.RFC3339)
		}
		primary := "the CNI config in use"
		if g.Primary != "" {
			primary = filepath.Base(g.Primary)
		}
		f.Message = fmt.Sprintf("the pod was networked (its first container created at %s) while the node's CNI chain had no istio-cni: "+
			"%s did not chain it from %s %s (%s), so nothing wrote its capture rules",
			networked.UTC().Format(time.RFC3339), primary, g.From.UTC().Format(time.RFC3339), until, gapSource(g.Source))
		f.Remedy = "Something rewrote the node's primary CNI config without istio-cni (another CNI's agent or reconciler, a node " +
			"bootstrap script); istio-cni-node re-chains itself when it sees that, but pods networked meanwhile were never " +
			"captured. Restart the pod. Then stop the rewrite: with Cilium set cni.exclusive=false, with another CNI its own " +
			"setting that keeps foreign plugins in its config, or give istio-cni its own config file (Istio 1.27+ " +
			"istioOwnedCNIConfig, 02-istio-cni.conflist, which sorts first). The chain's timeline is in meshdoctor's istio-cni node detail."
		f.Evidence["chainGap"] = *g
		return f, true
	}
	if t.IstioCNIStartedAt.IsZero() || !networked.Before(t.IstioCNIStartedAt) {
		return nodecheck.Finding{}, false
	}
	f.Message = fmt.Sprintf("the pod was networked (its first container created at %s) before this node's istio-cni-node came up (%s): "+
		"istio-cni was not in the CNI chain yet, so nothing wrote its capture rules", networked.UTC().Format(time.RFC3339), t.IstioCNIStartedAt.UTC().Format(time.RFC3339))
	f.Remedy = "Restart the pod: its new sandbox goes through istio-cni. To keep this from happening on new and autoscaled nodes, " +
		"enable Istio's repair controller (values.cni.repair.enabled, on by default: it deletes or labels such pods) and " +
		"register nodes with the cni.istio.io/not-ready:NoSchedule taint, which istio-cni-node removes once it is ready."
	f.Evidence["istioCNIStartedAt"] = t.IstioCNIStartedAt.UTC().Format(time.RFC3339Nano)
	return f, true
}

// gapSource says how a chain gap is known, for the finding's message.
func gapSource(source string) string {
	if source == "inotify" {
		return "seen by meshdoctor's agent as it happened"
	}
	return "told by the config files' modification times"
}

// excludedByCNI names istio-cni's namespace exclusion as the reason a CNI-mode pod's rules are missing.
func excludedByCNI(findings []nodecheck.Finding, why string) {
	for i, f := range findings {
		if f.Code != nodecheck.RedirectRulesMissing {
			continue
		}
		findings[i].Message += "; " + why + ", so the plugin skipped this pod"
		findings[i].Remedy = "The pod is injected for the Istio CNI plugin (istio-validation instead of istio-init), but istio-cni " +
			"leaves its namespace alone (cni.excludeNamespaces in Istio's values): its traffic is never redirected and " +
			"istio-validation fails. Remove the namespace from cni.excludeNamespaces, or do not inject pods there " +
			"(sidecar.istio.io/inject: \"false\", or the namespace's injection label), then restart the pod."
		findings[i].Evidence["cniExcluded"] = why
	}
}

// tproxyRouting checks the policy routing TPROXY capture needs in every family that has rules:
// packets marked by ISTIO_DIVERT must be looked up in a table that delivers them locally.
func tproxyRouting(cfg intent.Config, diffs []FamilyDiff, snap rules.Snapshot) (nodecheck.Finding, bool) {
	var families []rules.Family
	for _, d := range diffs {
		if !d.ExpectedNone && cfg.IncludeInboundPorts != "" {
			families = append(families, d.Family)
		}
	}
	var missing []string
	for _, f := range unroutedMark(families, snap.Routing, cfg.TProxyMark, cfg.TProxyMark) {
		missing = append(missing, fmt.Sprintf("%s: no `ip rule fwmark 0x%x lookup TABLE` whose table has `local default dev lo`",
			f, cfg.TProxyMark))
	}
	if len(missing) == 0 {
		return nodecheck.Finding{}, false
	}
	return nodecheck.Finding{
		Code:     nodecheck.RedirectRulesIncomplete,
		Severity: nodecheck.SeverityError,
		Message:  "TPROXY capture lacks its policy routing: " + strings.Join(missing, "; "),
		Remedy: "In TPROXY mode Istio's writer adds `ip rule add fwmark 1337 lookup 133` and `ip route add local default " +
			"dev lo table 133`; without them marked inbound packets never reach the proxy. Restart the pod so " +
			"istio-init writes them again, and look for what removed them (a node agent flushing ip rules).",
		Evidence: map[string]any{"missing": missing, "markRulesFound": markRoutesFound(snap)},
	}, true
}

// unroutedMark returns the families where no policy-routing rule selects mark (its mask
// covering the bits of mask) and looks up a table that delivers everything locally.
func unroutedMark(families []rules.Family, routing []rules.MarkRoute, mark, mask uint32) []rules.Family {
	var out []rules.Family
	for _, f := range families {
		ok := false
		for _, r := range routing {
			if r.Family == f && r.Mark&r.Mask == mark&r.Mask && r.Mask&mask == mask && r.LocalDefault {
				ok = true
			}
		}
		if !ok {
			out = append(out, f)
		}
	}
	return out
}

// markRoutesFound lists the mark rules that exist, for evidence.
func markRoutesFound(snap rules.Snapshot) []string {
	var found []string
	for _, r := range snap.Routing {
		found = append(found, r.String())
	}
	return found
}

// dropInetProjection removes the IPv6 view of Istio's native `inet` tables when it holds nothing
// but the family-agnostic rules also seen in the IPv4 view. Istio writes one inet table even for
// an IPv4-only pod, and its rules without an address match apply to IPv6 packets too: that is not
// IPv6 capture written on purpose, so it is not an unexpected IPv6 rule set either.
func dropInetProjection(sets []*rules.RuleSet) []*rules.RuleSet {
	v4 := map[string]bool{}
	for _, s := range sets {
		if s.Backend == rules.BackendNative && s.Family == rules.IPv4 {
			for _, t := range s.Tables {
				for _, c := range t.Chains {
					for _, r := range c.Rules {
						v4[t.Name+"/"+c.Name+"/"+r.Spec()] = true
					}
				}
			}
		}
	}
	out := make([]*rules.RuleSet, 0, len(sets))
	for _, s := range sets {
		if s.Backend == rules.BackendNative && s.Family == rules.IPv6 && subsetOf(s, v4) {
			continue
		}
		out = append(out, s)
	}
	return out
}

func subsetOf(s *rules.RuleSet, keys map[string]bool) bool {
	for _, t := range s.Tables {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				if !keys[t.Name+"/"+c.Name+"/"+r.Spec()] {
					return false
				}
			}
		}
	}
	return true
}
