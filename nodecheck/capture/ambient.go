package capture

import (
	"context"
	"fmt"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Ambient mode's in-pod capture, as the istio-cni node agent writes it inside an enrolled pod's
// network namespace (istio.io/istio cni/pkg/iptables, AppendInpodRules): ztunnel runs outside
// the pod but listens in it, and these rules send the pod's traffic to those listeners.
const (
	chainAmbientPrerouting = "ISTIO_PRERT"
	chainAmbientOutput     = "ISTIO_OUTPUT"

	// ambientMark marks ztunnel's own packets (InpodMark/InpodMask); ambientTProxyMark is the
	// connmark of connections ztunnel accepted (InpodTProxyMark/InpodTProxyMask).
	ambientMark       = 0x539
	ambientMarkMask   = 0xfff
	ambientTProxyMark = 0x111
	ambientTProxyMask = 0xfff
	// ambientRouteTable delivers packets with the TPROXY connmark locally (RouteTableInbound).
	ambientRouteTable = 100

	ztunnelOutboundPort       = 15001
	ztunnelInboundPlaintext   = 15006
	ztunnelInboundPort        = 15008 // HBONE
	ztunnelDNSPort            = 15053
	ambientRestoreMaskAllBits = 0xffffffff
)

// BuildAmbientExpected returns the in-pod rules ambient mode writes for cfg in one family (none
// when enabled is false).
func BuildAmbientExpected(cfg intent.AmbientConfig, family rules.Family, enabled bool) *Expected {
	return buildAmbient(cfg, family, enabled, chainAmbientPrerouting)
}

// buildAmbient is the in-pod rule set of both istio-cni writers: they write the same rules in
// the same chains, only the prerouting user chain is spelled differently.
func buildAmbient(cfg intent.AmbientConfig, family rules.Family, enabled bool, chainAmbientPrerouting string) *Expected {
	e := &Expected{Family: family, Tables: map[string]map[string][]ExpectedRule{}, tolerated: map[tableChain]bool{}}
	if !enabled {
		return e
	}
	loopback, probe := "127.0.0.1/32", cfg.HostProbeSNAT.String()+"/32"
	if family == rules.IPv6 {
		loopback, probe = "::1/128", cfg.HostProbeSNATIPv6.String()+"/128"
	}
	mark := rules.MarkValue(ambientMark, ambientMarkMask)
	tproxyMark := rules.MarkValue(ambientTProxyMark, ambientTProxyMask)
	dnsOptional := cfg.DNS == nil
	dns := cfg.DNS == nil || *cfg.DNS

	e.append("mangle", "PREROUTING", "-j %s", chainAmbientPrerouting)
	e.append("mangle", "OUTPUT", "-j %s", chainAmbientOutput)
	e.append("nat", "OUTPUT", "-j %s", chainAmbientOutput)
	if dns {
		e.add("raw", "PREROUTING", dnsOptional, "-j %s", chainAmbientPrerouting)
		e.add("raw", "OUTPUT", dnsOptional, "-j %s", chainAmbientOutput)
	}
	e.append("nat", "PREROUTING", "-j %s", chainAmbientPrerouting)
	for _, ifc := range cfg.VirtualInterfaces {
		e.append("nat", chainAmbientPrerouting, "-i %s -p tcp -j REDIRECT --to-ports %d", ifc, ztunnelOutboundPort)
		e.append("nat", chainAmbientPrerouting, "-i %s -p tcp -j RETURN", ifc)
	}
	e.append("mangle", chainAmbientPrerouting, "-m mark --mark %s -j CONNMARK --set-xmark %s", mark, tproxyMark)
	if !cfg.BypassInbound {
		// The kubelet's probes, SNATed on the node, must reach the app directly.
		e.append("nat", chainAmbientPrerouting, "-s %s -p tcp -j ACCEPT", probe)
	}
	e.append("nat", chainAmbientOutput, "-d %s -p tcp -j ACCEPT", probe)
	if !cfg.BypassInbound {
		e.append("nat", chainAmbientPrerouting, "! -d %s -p tcp ! --dport %d -m mark ! --mark %s -j REDIRECT --to-ports %d",
			loopback, ztunnelInboundPort, mark, ztunnelInboundPlaintext)
	}
	e.append("mangle", chainAmbientOutput, "-m connmark --mark %s -j CONNMARK --restore-mark --nfmask 0x%x --ctmask 0x%x",
		tproxyMark, ambientRestoreMaskAllBits, ambientRestoreMaskAllBits)
	if dns {
		e.add("nat", chainAmbientOutput, dnsOptional, "! -o lo -p udp -m mark ! --mark %s --dport 53 -j REDIRECT --to-ports %d",
			mark, ztunnelDNSPort)
		e.add("nat", chainAmbientOutput, dnsOptional, "! -d %s -p tcp --dport 53 -m mark ! --mark %s -j REDIRECT --to-ports %d",
			loopback, mark, ztunnelDNSPort)
		e.add("raw", chainAmbientOutput, dnsOptional, "-p udp -m mark --mark %s --dport 53 -j CT --zone 1", mark)
		e.add("raw", chainAmbientPrerouting, dnsOptional, "-p udp -m mark ! --mark %s --sport 53 -j CT --zone 1", mark)
	}
	e.append("nat", chainAmbientOutput, "-p tcp -m mark --mark %s -j ACCEPT", tproxyMark)
	e.append("nat", chainAmbientOutput, "! -d %s -o lo -j ACCEPT", loopback)
	e.append("nat", chainAmbientOutput, "! -d %s -p tcp -m mark ! --mark %s -j REDIRECT --to-ports %d",
		loopback, mark, ztunnelOutboundPort)
	return e
}

// checkAmbient verifies an ambient pod's in-pod rules, the policy routing they rely on, and
// ztunnel's sockets behind them.
func (c *Check) checkAmbient(ctx context.Context, t nodecheck.Target, cfg intent.Config) (nodecheck.Result, error) {
	acfg, err := intent.AmbientFromAnnotations(t.Annotations)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading the ambient configuration of %s: %w", t.ID(), err)
	}
	cfg.Ambient = &acfg
	res := nodecheck.Result{Capture: &nodecheck.Capture{Mode: "ambient", Backend: "none"}}
	snap, err := c.Reader.ReadRules(ctx, t.Netns)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading capture rules of %s: %w", t.ID(), err)
	}
	detail := Detail{Config: cfg, Raw: map[string]string{}}
	for _, s := range snap.Sets {
		detail.Raw[string(s.Backend)+"/"+s.Family.String()] = s.Save()
	}
	if f, wrong, err := netnsNotPods(t, snap.Addrs); err != nil {
		return nodecheck.Result{}, err
	} else if wrong {
		res.Detail, res.Findings = detail, []nodecheck.Finding{f}
		return res, nil
	}
	// istio-cni writes IPv6 rules whenever its IPv6 support is on (the default), whatever the
	// pod's addresses: require them for a pod with an IPv6 address, compare them when present.
	build, sets := BuildAmbientExpected, snap.Sets
	v6 := ExpectIPv6(intent.Config{DualStack: true}, snap.Addrs)
	if nativeAmbient(snap.Sets) {
		build = BuildAmbientNftExpected
		if !v6 {
			// The family-agnostic rules of the inet tables show in the IPv6 view of an IPv4-only
			// writer too: not IPv6 capture (see dropInetProjection).
			sets = dropInetProjection(sets)
		}
	}
	ipv6 := v6 || hasIstioRules(sets, rules.IPv6)
	diffs := []FamilyDiff{
		Compare(build(acfg, rules.IPv4, true), sets),
		Compare(build(acfg, rules.IPv6, ipv6), sets),
	}
	detail.Families = diffs
	res.Detail = detail
	res.Capture.Backend = backendName(diffs)
	res.Capture.Intent, res.Capture.VerifiedBy = string(ambientSource(t)), nodecheck.VerifiedByRules
	res.Findings = c.diagnose(cfg, diffs, snap, intent.SourceAnnotations)
	if f, ok := ambientRouting(diffs, snap); ok {
		res.Findings = append(res.Findings, f)
	}
	if f, ok := c.kernelCause(ctx, ambientKinds, res.Findings); ok {
		res.Findings = append(res.Findings, f)
	}
	// istio-cni writes an ambient pod's rules, whatever went wrong with them.
	for i := range res.Findings {
		res.Findings[i].Component = nodecheck.ComponentIstioCNI
	}
	// Rules that verify still need ztunnel behind them; rules that do not already explain
	// the lost traffic.
	if !hasSeverity(res.Findings, nodecheck.SeverityError) {
		if f, ok := ambientListeners(acfg, snap); ok {
			res.Findings = append(res.Findings, f)
		}
	}
	if !hasSeverity(res.Findings, nodecheck.SeverityError) {
		var host []nodecheck.Finding
		detail.Host, host = c.ambientHostFindings(ctx, probedAddrs(t, snap.Addrs), nativeAmbient(snap.Sets))
		res.Findings = append(res.Findings, host...)
		res.Detail = detail
	}
	if c.Traffic != nil && !hasSeverity(res.Findings, nodecheck.SeverityError) {
		c.addTrafficProof(ctx, t, &res, &detail, ambientCanaries(canaryFamilies(snap.Addrs, ipv6)), trafficNotPlanned{inbound: inboundNotProvenAmbient}, snap)
		res.Detail = detail
	}
	return res, nil
}

func hasIstioRules(sets []*rules.RuleSet, family rules.Family) bool {
	for _, s := range sets {
		if s.Family == family && istioRuleCount(s) > 0 {
			return true
		}
	}
	return false
}

// ambientRouting checks, in every family with rules, that connections ztunnel accepted (connmark
// 0x111/0xfff) are routed to the local host: `ip rule fwmark 0x111/0xfff lookup 100` with
// `local default dev lo` in table 100.
func ambientRouting(diffs []FamilyDiff, snap rules.Snapshot) (nodecheck.Finding, bool) {
	var families []rules.Family
	for _, d := range diffs {
		if !d.ExpectedNone && len(d.Backends) > 0 {
			families = append(families, d.Family)
		}
	}
	var missing []string
	for _, f := range unroutedMark(families, snap.Routing, ambientTProxyMark, ambientTProxyMask) {
		missing = append(missing, fmt.Sprintf("%s: no `ip rule fwmark 0x%x/0x%x lookup %d` whose table has `local default dev lo`",
			f, ambientTProxyMark, ambientTProxyMask, ambientRouteTable))
	}
	if len(missing) == 0 {
		return nodecheck.Finding{}, false
	}
	return nodecheck.Finding{
		Code:     nodecheck.RedirectRulesIncomplete,
		Severity: nodecheck.SeverityError,
		Message:  "ambient capture lacks its policy routing: " + strings.Join(missing, "; "),
		Remedy: "istio-cni adds `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and `ip route add local " +
			"0.0.0.0/0 dev lo table 100` in the pod; without them replies to connections ztunnel accepted leave the pod " +
			"instead of reaching ztunnel. Restart the pod so istio-cni writes them again, and look for what removed them.",
		Evidence:  map[string]any{"missing": missing, "markRulesFound": markRoutesFound(snap)},
		Component: nodecheck.ComponentIstioCNI,
	}, true
}

// ambientSource says whether the pod's own annotations shaped its ambient rules, or only
// istio-cni's defaults did.
func ambientSource(t nodecheck.Target) intent.Source {
	for _, k := range []string{istiopod.AnnotationAmbientDNSCapture, istiopod.AnnotationAmbientBypassInbound, istiopod.AnnotationRerouteInterfaces} {
		if _, ok := t.Annotations[k]; ok {
			return intent.SourceAnnotations
		}
	}
	return intent.SourceDefaults
}
