package capture

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// TrafficProber sends canary SYNs inside a network namespace, and from the node's into a pod's
// (nodecheck/canary.Prober).
type TrafficProber interface {
	Run(ctx context.Context, netnsPath string, probes []canary.Probe) ([]canary.Outcome, error)
	RunInbound(ctx context.Context, nodePath, podPath string, probes []canary.Probe) ([]canary.Outcome, error)
}

// What a canary should see: redirected to the proxy, or left alone.
const (
	expectCaptured = "captured"
	expectBypass   = "bypass"
)

// canaryUID and canaryGID own the app's probes: an unprivileged user no capture excludes.
const canaryUID, canaryGID = 65534, 65534

// plannedProbe is one canary with what the intent says must become of it.
type plannedProbe struct {
	probe  canary.Probe
	expect string
	// redirectTo is where a captured probe must go (127.0.0.1 or ::1, and the outbound port).
	redirectTo netip.AddrPort
	// proxyPorts are the proxy's capture ports: an excluded probe redirected to one of them
	// reaches the proxy against the intent (one redirected elsewhere is another NAT's business).
	proxyPorts []uint16
	why        string
	// inbound: sent from the node's netns to the pod's address (canary.Prober.RunInbound).
	inbound bool
}

// TrafficProof is what the canary did, for the debug endpoint.
type TrafficProof struct {
	Probes []ProbeResult `json:"probes,omitempty"`
	// NotProven says why traffic could not prove the capture, when it could not.
	NotProven string `json:"notProven,omitempty"`
	// InboundNotProven says why inbound capture was not proven by traffic, when it was not.
	InboundNotProven string `json:"inboundNotProven,omitempty"`
}

// ProbeResult is one canary and what became of it.
type ProbeResult struct {
	Why     string         `json:"why"`
	Expect  string         `json:"expect"`
	Outcome canary.Outcome `json:"outcome"`
	Result  string         `json:"result"`
	Error   string         `json:"error,omitempty"`
}

// Documentation addresses (RFC 5737, RFC 3849): nothing real answers them, and a SYN that escapes
// the pod dies at the first hop (the canary's TTL is 1).
var (
	docAddrV4 = netip.MustParseAddr("192.0.2.1")
	docAddrV6 = netip.MustParseAddr("2001:db8::1")
)

// sidecarCanaries plans the probes of a sidecar pod per family: one the intent captures, and one
// for each exclusion it can test without leaving the pod (the proxy's own user, an excluded
// port). Excluded address ranges are not probed: their addresses are real.
func sidecarCanaries(cfg intent.Config, families []rules.Family) ([]plannedProbe, string) {
	if len(cfg.ExcludeInterfaces) > 0 || len(cfg.RerouteInterfaces) > 0 {
		// Which interface the SYN leaves by decides its capture, and the canary cannot pick it.
		return nil, "the intent excludes or reroutes interfaces: which interface a connection uses decides its capture"
	}
	var plan []plannedProbe
	var why []string
	for _, fam := range families {
		dst, ok := capturedDestination(cfg, fam)
		if !ok {
			why = append(why, fmt.Sprintf("the intent captures no outbound %s destination the canary can reach", fam))
			continue
		}
		lo := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cfg.ProxyPort)
		if fam == rules.IPv6 {
			lo = netip.AddrPortFrom(netip.IPv6Loopback(), cfg.ProxyPort)
		}
		plan = append(plan, plannedProbe{
			probe:  canary.Probe{Dst: dst, UID: canaryUID, GID: canaryGID},
			expect: expectCaptured, redirectTo: lo,
			why: fmt.Sprintf("an app's connection to %s must go to the proxy's outbound port", dst),
		})
		if uid, ok := firstNumeric(cfg.ProxyUID); ok {
			plan = append(plan, plannedProbe{
				probe:  canary.Probe{Dst: dst, UID: uint32(uid), GID: canaryGID},
				expect: expectBypass, proxyPorts: []uint16{cfg.ProxyPort, cfg.InboundCapturePort},
				why: fmt.Sprintf("the proxy's own connection (uid %d) must not come back to it", uid),
			})
		}
		if port, ok := firstNumeric(cfg.ExcludeOutboundPorts); ok && len(cfg.IncludeOutboundPorts) == 0 {
			plan = append(plan, plannedProbe{
				probe:  canary.Probe{Dst: netip.AddrPortFrom(dst.Addr(), uint16(port)), UID: canaryUID, GID: canaryGID},
				expect: expectBypass, proxyPorts: []uint16{cfg.ProxyPort, cfg.InboundCapturePort},
				why: fmt.Sprintf("outbound port %d is excluded from capture", port),
			})
		}
	}
	return plan, strings.Join(why, "; ")
}

// ambientCanaries plans an ambient pod's probes: outbound TCP goes to ztunnel's 15001.
func ambientCanaries(families []rules.Family) []plannedProbe {
	var plan []plannedProbe
	for _, fam := range families {
		dst, lo := netip.AddrPortFrom(docAddrV4, 80), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ambientOutboundPort)
		if fam == rules.IPv6 {
			dst, lo = netip.AddrPortFrom(docAddrV6, 80), netip.AddrPortFrom(netip.IPv6Loopback(), ambientOutboundPort)
		}
		plan = append(plan, plannedProbe{
			probe:  canary.Probe{Dst: dst, UID: canaryUID, GID: canaryGID},
			expect: expectCaptured, redirectTo: lo,
			why: fmt.Sprintf("an app's connection to %s must go to ztunnel's outbound port", dst),
		})
	}
	return plan
}

// ambientOutboundPort is where istio-cni's in-pod rules send outbound TCP (ztunnel's listener).
const ambientOutboundPort = 15001

// canaryFamilies are the families a canary can prove: those the namespace has an address of
// (a SYN needs a source), IPv6 only where IPv6 capture is meant.
func canaryFamilies(addrs []netip.Addr, v6 bool) []rules.Family {
	var out []rules.Family
	if slices.ContainsFunc(addrs, func(a netip.Addr) bool { return a.Is4() || a.Is4In6() }) {
		out = append(out, rules.IPv4)
	}
	if v6 && slices.ContainsFunc(addrs, func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() && !a.IsLinkLocalUnicast() }) {
		out = append(out, rules.IPv6)
	}
	return out
}

// capturedDestination picks a destination and port the intent captures in the family: a
// documentation address when every address is captured, else the first host of the first
// included range; a port that is not excluded, or the first included one when only those are.
func capturedDestination(cfg intent.Config, fam rules.Family) (netip.AddrPort, bool) {
	doc := docAddrV4
	if fam == rules.IPv6 {
		doc = docAddrV6
	}
	excluded := func(a netip.Addr) bool {
		return slices.ContainsFunc(cfg.ExcludeOutboundCIDRs, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	var addr netip.Addr
	switch {
	case cfg.IncludeOutboundAll:
		addr = doc
	default:
		for _, p := range cfg.IncludeOutboundCIDRs {
			if p.Addr().Is6() == (fam == rules.IPv6) && !p.Addr().Is4In6() {
				addr = firstHostNotExcluded(p, excluded)
				break
			}
		}
	}
	var port uint16
	if addr.IsValid() && !excluded(addr) {
		port = firstPortNotExcluded(cfg.ExcludeOutboundPorts)
	} else if p, ok := firstNumeric(cfg.IncludeOutboundPorts); ok {
		// Only some ports are captured, to every destination.
		addr, port = doc, uint16(p)
	}
	if !addr.IsValid() || port == 0 || excluded(addr) {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(addr, port), true
}

// firstHostNotExcluded is the first of a range's first hosts (its network address skipped, unless
// the range is one address) that no excluded range holds; the range's first host when all are.
func firstHostNotExcluded(p netip.Prefix, excluded func(netip.Addr) bool) netip.Addr {
	a := p.Masked().Addr()
	if p.Bits() == a.BitLen() {
		return a
	}
	first := a.Next()
	for h, i := first, 0; i < 16 && p.Contains(h); h, i = h.Next(), i+1 {
		if !excluded(h) {
			return h
		}
	}
	return first
}

// firstPortNotExcluded is a common service port (80, 8080, 443), or else the first from 81 up,
// that the intent does not exclude; 0 when none is left.
func firstPortNotExcluded(excludedPorts []string) uint16 {
	free := func(p int) bool { return !slices.Contains(excludedPorts, strconv.Itoa(p)) }
	for _, p := range []int{80, 8080, 443} {
		if free(p) {
			return uint16(p)
		}
	}
	for p := 81; p < 1<<16; p++ {
		if free(p) {
			return uint16(p)
		}
	}
	return 0
}

func firstNumeric(list []string) (int, bool) {
	for _, s := range list {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 && n < 1<<16 {
			return n, true
		}
	}
	return 0, false
}

// proveByTraffic sends the planned canaries (outbound ones inside the pod's netns, inbound ones
// from the node's) and judges them. verified is true when every captured canary that could be
// judged reached the proxy's port, at least one did, and no excluded one did.
func (c *Check) proveByTraffic(ctx context.Context, netnsPath string, plan []plannedProbe, snap rules.Snapshot) (TrafficProof, []nodecheck.Finding, bool) {
	var out, in []canary.Probe
	for _, p := range plan {
		if p.inbound {
			in = append(in, p.probe)
		} else {
			out = append(out, p.probe)
		}
	}
	outOutcomes, err := c.Traffic.Run(ctx, netnsPath, out)
	if err != nil {
		return TrafficProof{NotProven: err.Error()}, nil, false
	}
	var proof TrafficProof
	var inOutcomes []canary.Outcome
	if len(in) > 0 {
		if inOutcomes, err = c.Traffic.RunInbound(ctx, c.NodeNetns, netnsPath, in); err != nil {
			proof.InboundNotProven = err.Error()
			plan = slices.DeleteFunc(slices.Clone(plan), func(p plannedProbe) bool { return p.inbound })
		}
	}
	outcomes := make([]canary.Outcome, 0, len(plan))
	for _, p := range plan {
		if p.inbound {
			outcomes, inOutcomes = append(outcomes, inOutcomes[0]), inOutcomes[1:]
		} else {
			outcomes, outOutcomes = append(outcomes, outOutcomes[0]), outOutcomes[1:]
		}
	}
	var findings []nodecheck.Finding
	capturedOK, capturedRun := 0, 0
	var notRun, inboundNotRun []string
	for i, o := range outcomes {
		p := plan[i]
		r := ProbeResult{Why: p.why, Expect: p.expect, Outcome: o}
		switch {
		case o.Err != nil && p.inbound:
			r.Result, r.Error = "not run", o.Err.Error()
			inboundNotRun = append(inboundNotRun, o.Err.Error())
		case o.Err != nil:
			r.Result, r.Error = "not run", o.Err.Error()
			if p.expect == expectCaptured {
				notRun = append(notRun, o.Err.Error())
			}
		case p.inbound:
			switch r.Result = judgeInbound(p, o, snap.Addrs); r.Result {
			case "captured":
				capturedRun++
				capturedOK++
			case "bypassed":
				capturedRun++
				findings = append(findings, inboundBypassed(p, o, snap))
			default:
				inboundNotRun = append(inboundNotRun, fmt.Sprintf("the SYN to %s got no answer and left no entry in the pod's netns: it did not reach it", o.Probe.Dst))
			}
		case p.expect == expectCaptured:
			capturedRun++
			if o.Redirected() && o.ReplySrc == p.redirectTo {
				r.Result = "captured"
				capturedOK++
				break
			}
			r.Result = "bypassed"
			findings = append(findings, bypassed(p, o, snap))
		case o.Redirected() && slices.Contains(p.proxyPorts, o.ReplySrc.Port()):
			r.Result = "captured although excluded"
			findings = append(findings, exclusionIgnored(p, o))
		case o.Redirected():
			r.Result = "bypassed the proxy, as intended (another NAT redirected it)"
		default:
			r.Result = "bypassed, as intended"
		}
		proof.Probes = append(proof.Probes, r)
	}
	if len(notRun) > 0 {
		proof.NotProven = "canary not run: " + strings.Join(notRun, "; ")
	}
	if len(inboundNotRun) > 0 {
		proof.InboundNotProven = "inbound canary not judged: " + strings.Join(inboundNotRun, "; ")
	}
	verified := capturedRun > 0 && capturedOK == capturedRun && len(notRun) == 0 && len(findings) == 0
	return proof, findings, verified
}

func bypassed(p plannedProbe, o canary.Outcome, snap rules.Snapshot) nodecheck.Finding {
	what := "was not redirected"
	switch {
	case !o.Tracked:
		what = "was not tracked by conntrack, so no NAT rule could apply (a NOTRACK rule, or conntrack off in the namespace)"
	case o.Redirected():
		what = fmt.Sprintf("was sent to %s instead", o.ReplySrc)
	}
	ev := map[string]any{
		"sent":       o.String(),
		"expected":   p.redirectTo.String(),
		"conntrack":  conntrackEvidence(o),
		"family":     familyOf(o.Probe.Dst.Addr()).String(),
		"verifiedBy": "rules read right; traffic disagrees",
	}
	if s := pathRules(snap, familyOf(o.Probe.Dst.Addr()), "OUTPUT"); len(s) > 0 {
		ev["outputPathRules"] = s
	}
	return nodecheck.Finding{
		Code:     nodecheck.CaptureBypassed,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("Istio's capture rules read right, but a canary SYN to %s %s: connections from the app bypass the proxy (expected %s).",
			o.Probe.Dst, what, p.redirectTo),
		Remedy: "Something outside Istio's rules acts first on the pod's packets: look in the pod's netns for a rule in " +
			"another table or backend (nft list ruleset; iptables-legacy-save and iptables-nft-save, both families) " +
			"that returns, accepts, untracks (NOTRACK) or NATs TCP before Istio's nat OUTPUT chain, and for eBPF " +
			"programs on the pod's cgroup (bpftool cgroup tree). Remove it or make it skip the pod, then restart " +
			"the pod so that istio-init (or the istio-cni plugin) writes the capture again.",
		Evidence: ev,
	}
}

func exclusionIgnored(p plannedProbe, o canary.Outcome) nodecheck.Finding {
	return nodecheck.Finding{
		Code:     nodecheck.CaptureExclusionIgnored,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("A canary SYN that the pod's capture intent excludes (%s) was redirected to %s: that traffic reaches the proxy against the intent.",
			p.why, o.ReplySrc),
		Remedy: "A rule ahead of Istio's exclusions redirects this traffic: look in the pod's netns (nft list ruleset, " +
			"iptables-save of both backends) for a REDIRECT or DNAT that is not Istio's, or a capture written for " +
			"another configuration; restart the pod so that its capture is written again.",
		Evidence: map[string]any{"sent": o.String(), "conntrack": conntrackEvidence(o), "excludedBecause": p.why},
	}
}

func conntrackEvidence(o canary.Outcome) string {
	switch {
	case !o.Tracked:
		return "no entry"
	case o.Gone:
		return fmt.Sprintf("entry made with reply from %s, dropped at once (answered by a reset)", o.ReplySrc)
	}
	return fmt.Sprintf("entry %s, reply from %s, mark 0x%x", o.State, o.ReplySrc, o.Mark)
}

func familyOf(a netip.Addr) rules.Family {
	if a.Is4() {
		return rules.IPv4
	}
	return rules.IPv6
}

// pathRules lists the rules of the family's chains named hook (OUTPUT, PREROUTING) that are not
// Istio's, in every backend read: where a connection meets something else first. Tables
// meshdoctor does not read (another owner's nftables table) are not in it.
func pathRules(snap rules.Snapshot, fam rules.Family, hook string) []string {
	var out []string
	for _, s := range snap.Sets {
		if s.Family != fam {
			continue
		}
		for _, t := range s.Tables {
			for _, ch := range t.Chains {
				if !strings.EqualFold(ch.Name, hook) {
					continue
				}
				for _, r := range ch.Rules {
					if !istioChain(r.Target.Name) {
						out = append(out, fmt.Sprintf("%s %s: %s", t.Origin, ch.Name, r.Spec()))
					}
				}
			}
		}
	}
	return out
}
