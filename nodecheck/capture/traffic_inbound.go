package capture

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/canary"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Why inbound capture is not proven by traffic, per mode; the rules still say it.
const (
	inboundNotProvenTProxy = "TPROXY captures inbound without rewriting the connection, so a SYN's conntrack entry " +
		"cannot tell the proxy's port from the app's without a handshake"
	inboundNotProvenAmbient = "ambient mode excludes connections from the node by design (istio-cni SNATs them to " +
		"169.254.7.127, which the pod's rules let through), so a SYN from the node says nothing of inbound capture"
)

// sidecarInboundCanary plans the SYN the node sends to a sidecar pod's IP on a port the intent
// captures inbound: REDIRECT must send it to the proxy's inbound port on the pod's address.
// nodeNetns is where it is sent from; without it, or without the pod's IP from the runtime, or
// in a mode where a SYN cannot prove it, nothing is planned and the reason is returned.
func sidecarInboundCanary(cfg intent.Config, podIP string, families []rules.Family, nodeNetns string) (plannedProbe, string) {
	switch {
	case cfg.Mode == istiopod.ModeTProxy:
		return plannedProbe{}, inboundNotProvenTProxy
	case cfg.IncludeInboundPorts == "":
		return plannedProbe{}, ""
	case nodeNetns == "":
		return plannedProbe{}, "no node network namespace to send an inbound SYN from"
	case podIP == "":
		return plannedProbe{}, "the runtime gives no pod IP to send an inbound SYN to"
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(podIP))
	if err != nil {
		return plannedProbe{}, fmt.Sprintf("the pod IP %q is not an address", podIP)
	}
	ip = ip.Unmap()
	if !slices.Contains(families, familyOf(ip)) {
		return plannedProbe{}, fmt.Sprintf("%s capture is not meant for the pod's IP %s", familyOf(ip), ip)
	}
	port, ok := capturedInboundPort(cfg)
	if !ok {
		return plannedProbe{}, "the intent captures no inbound port the canary can aim at"
	}
	return plannedProbe{
		probe:      canary.Probe{Dst: netip.AddrPortFrom(ip, port), UID: canaryUID, GID: canaryGID},
		expect:     expectCaptured,
		redirectTo: netip.AddrPortFrom(ip, cfg.InboundCapturePort),
		inbound:    true,
		why:        fmt.Sprintf("a connection from the node to %s must go to the proxy's inbound port", netip.AddrPortFrom(ip, port)),
	}, ""
}

// capturedInboundPort is a port the intent redirects inbound: not one Istio's own rules let
// through (the proxy's ports, HBONE, -d), the first listed when only some are captured.
func capturedInboundPort(cfg intent.Config) (uint16, bool) {
	excluded := slices.Clone(cfg.ExcludeInboundPorts)
	for _, p := range []uint16{cfg.InboundCapturePort, cfg.InboundTunnelPort, cfg.ProxyPort} {
		excluded = append(excluded, strconv.Itoa(int(p)))
	}
	if cfg.IncludeInboundPorts == "*" {
		p := firstPortNotExcluded(excluded)
		return p, p != 0
	}
	for _, s := range cfg.IncludeInboundPortList() {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 && n < 1<<16 && !slices.Contains(excluded, strconv.Itoa(n)) {
			return uint16(n), true
		}
	}
	return 0, false
}

// judgeInbound says what an inbound canary's outcome proves: "captured", "bypassed", or
// "not proven" when the SYN neither made an entry in the pod nor was answered (it did not reach
// the pod's netns: a route of the node's elsewhere, a firewall on the way).
func judgeInbound(p plannedProbe, o canary.Outcome, podAddrs []netip.Addr) string {
	switch {
	case o.Tracked && o.Redirected() && o.ReplySrc.Port() == p.redirectTo.Port() && slices.Contains(podAddrs, o.ReplySrc.Addr().Unmap()):
		return "captured"
	case o.Tracked, o.Answer != canary.AnswerNone:
		return "bypassed"
	}
	return "not proven"
}

func inboundBypassed(p plannedProbe, o canary.Outcome, snap rules.Snapshot) nodecheck.Finding {
	what := "was not redirected"
	switch {
	case !o.Tracked:
		what = fmt.Sprintf("was answered (%s) but not tracked by the pod's conntrack, so no NAT rule could apply (a NOTRACK rule)", o.Answer)
	case o.Redirected():
		what = fmt.Sprintf("was sent to %s instead", o.ReplySrc)
	}
	fam := familyOf(o.Probe.Dst.Addr())
	ev := map[string]any{
		"sent":       o.String(),
		"expected":   p.redirectTo.String(),
		"conntrack":  conntrackEvidence(o),
		"family":     fam.String(),
		"direction":  "inbound",
		"verifiedBy": "rules read right; traffic disagrees",
	}
	if s := pathRules(snap, fam, "PREROUTING"); len(s) > 0 {
		ev["preroutingPathRules"] = s
	}
	return nodecheck.Finding{
		Code:     nodecheck.CaptureBypassed,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("Istio's capture rules read right, but a canary SYN from the node to %s %s: connections to the app bypass the proxy (expected %s).",
			o.Probe.Dst, what, p.redirectTo),
		Remedy: "Something outside Istio's rules acts first on packets entering the pod: look in the pod's netns for a rule in " +
			"another table or backend (nft list ruleset; iptables-legacy-save and iptables-nft-save, both families) " +
			"that returns, accepts, untracks (NOTRACK) or NATs TCP in PREROUTING before Istio's nat PREROUTING chain. " +
			"Remove it or make it skip the pod, then restart the pod so that istio-init (or the istio-cni plugin) writes " +
			"the capture again.",
		Evidence: ev,
	}
}
