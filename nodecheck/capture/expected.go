package capture

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Chain names Istio's sidecar capture uses (iptables spelling; native nftables names map onto them).
const (
	chainInbound    = "ISTIO_INBOUND"
	chainRedirect   = "ISTIO_REDIRECT"
	chainInRedirect = "ISTIO_IN_REDIRECT"
	chainOutput     = "ISTIO_OUTPUT"
	chainOutputDNS  = "ISTIO_OUTPUT_DNS"
	chainDivert     = "ISTIO_DIVERT"
	chainTProxy     = "ISTIO_TPROXY"
	chainDrop       = "ISTIO_DROP"
)

// outboundMark is the mark the proxy puts on its own loopback traffic to the app in TPROXY mode.
const outboundMark = 1338

// ExpectedRule is one rule Istio's writer produces for a configuration.
type ExpectedRule struct {
	Rule rules.Rule
	// Optional rules are not required and not flagged when present: their exact form depends on
	// what the node cannot see (the pod's resolv.conf for DNS capture).
	Optional bool
	// spec is Rule's canonical text, rendered once when the expectation is built (expectations
	// are cached and compared on every check).
	spec string
}

func expectedRule(r rules.Rule, optional bool) ExpectedRule {
	return ExpectedRule{Rule: r, Optional: optional, spec: r.Spec()}
}

// text is the rule's canonical text, as Compare matches it.
func (w ExpectedRule) text() string {
	if w.spec != "" {
		return w.spec
	}
	return w.Rule.Spec()
}

// Expected is the rule set a pod's configuration calls for in one family: table → chain → rules.
type Expected struct {
	Family rules.Family
	Tables map[string]map[string][]ExpectedRule
	// Order of chains as first written, for stable evidence.
	order []tableChain
	// tolerated chains may hold any rules: their content depends on what the node cannot see.
	tolerated map[tableChain]bool
}

type tableChain struct{ table, chain string }

// Chains lists the (table, chain) pairs with expected rules, in the order Istio writes them.
func (e *Expected) Chains() []struct{ Table, Chain string } {
	out := make([]struct{ Table, Chain string }, 0, len(e.order))
	for _, tc := range e.order {
		out = append(out, struct{ Table, Chain string }{tc.table, tc.chain})
	}
	return out
}

// Empty reports whether no rule is expected in this family.
func (e *Expected) Empty() bool {
	for _, chains := range e.Tables {
		for _, rs := range chains {
			for _, r := range rs {
				if !r.Optional {
					return false
				}
			}
		}
	}
	return true
}

func (e *Expected) chain(table, chain string) []ExpectedRule {
	if e.Tables[table] == nil {
		e.Tables[table] = map[string][]ExpectedRule{}
	}
	if _, ok := e.Tables[table][chain]; !ok {
		e.order = append(e.order, tableChain{table, chain})
	}
	return e.Tables[table][chain]
}

func (e *Expected) add(table, chain string, optional bool, spec string, args ...any) {
	r := rules.MustParseRuleSpec(fmt.Sprintf(spec, args...))
	e.Tables[table][chain] = append(e.chain(table, chain), expectedRule(r, optional))
}

func (e *Expected) append(table, chain, spec string, args ...any) {
	e.add(table, chain, false, spec, args...)
}

// insert places a rule at 1-based position pos, as `iptables -I CHAIN pos` does.
func (e *Expected) insert(table, chain string, pos int, spec string, args ...any) {
	r := expectedRule(rules.MustParseRuleSpec(fmt.Sprintf(spec, args...)), false)
	cur := e.chain(table, chain)
	i := min(max(pos-1, 0), len(cur))
	cur = append(cur[:i], append([]ExpectedRule{r}, cur[i:]...)...)
	e.Tables[table][chain] = cur
}

// BuildExpected returns the rules Istio's sidecar capture writes for cfg in one family. enabled is
// false for a family Istio does not capture in this pod (IPv6 on an IPv4 pod without dual stack):
// then nothing is expected there.
func BuildExpected(cfg intent.Config, family rules.Family, enabled bool) *Expected {
	e := &Expected{Family: family, Tables: map[string]map[string][]ExpectedRule{}, tolerated: map[tableChain]bool{}}
	if !enabled || cfg.Mode == istiopod.ModeNone {
		return e
	}
	loopback, passthrough := "127.0.0.1/32", "127.0.0.6/32"
	if family == rules.IPv6 {
		loopback, passthrough = "::1/128", "::6/128"
	}
	tproxy := cfg.Mode == istiopod.ModeTProxy

	for _, ifc := range cfg.ExcludeInterfaces {
		e.append("nat", "PREROUTING", "-i %s -j RETURN", ifc)
		e.append("nat", "OUTPUT", "-o %s -j RETURN", ifc)
	}
	if tproxy {
		for _, ifc := range cfg.ExcludeInterfaces {
			e.append("mangle", "PREROUTING", "-i %s -j RETURN", ifc)
			e.append("mangle", "OUTPUT", "-o %s -j RETURN", ifc)
		}
	}
	for _, ifc := range cfg.RerouteInterfaces {
		e.insert("nat", "PREROUTING", 1, "-i %s -j RETURN", ifc)
	}
	if cfg.DropInvalid {
		e.append("mangle", "PREROUTING", "-m conntrack --ctstate INVALID -j %s", chainDrop)
		e.append("mangle", chainDrop, "-j DROP")
	}
	e.append("nat", chainInbound, "-p tcp --dport %d -j RETURN", cfg.InboundTunnelPort)
	e.append("nat", chainRedirect, "-p tcp -j REDIRECT --to-ports %d", cfg.ProxyPort)
	e.append("nat", chainInRedirect, "-p tcp -j REDIRECT --to-ports %d", cfg.InboundCapturePort)
	e.inbound(cfg, loopback)

	e.append("nat", "OUTPUT", "-j %s", chainOutput)
	for _, p := range cfg.ExcludeOutboundPorts {
		e.append("nat", chainOutput, "-p tcp --dport %s -j RETURN", p)
		e.append("nat", chainOutput, "-p udp --dport %s -j RETURN", p)
	}
	e.append("nat", chainOutput, "-o lo -s %s -j RETURN", passthrough)
	loopbackIncluded := includesLoopback(cfg.IncludeOutboundCIDRs)
	for _, uid := range cfg.ProxyUID {
		if cfg.RedirectDNS {
			e.append("nat", chainOutput, "-o lo ! -d %s -p tcp -m multiport ! --dports 53,%d -m owner --uid-owner %s -j %s",
				loopback, cfg.InboundTunnelPort, uid, chainInRedirect)
		} else {
			e.append("nat", chainOutput, "-o lo ! -d %s -p tcp ! --dport %d -m owner --uid-owner %s -j %s",
				loopback, cfg.InboundTunnelPort, uid, chainInRedirect)
		}
		if !loopbackIncluded {
			if cfg.RedirectDNS {
				e.append("nat", chainOutput, "-o lo -p tcp ! --dport 53 -m owner ! --uid-owner %s -j RETURN", uid)
			} else {
				e.append("nat", chainOutput, "-o lo -m owner ! --uid-owner %s -j RETURN", uid)
			}
		}
		e.append("nat", chainOutput, "-m owner --uid-owner %s -j RETURN", uid)
	}
	for _, gid := range cfg.ProxyGID {
		e.append("nat", chainOutput, "-o lo ! -d %s -p tcp ! --dport %d -m owner --gid-owner %s -j %s",
			loopback, cfg.InboundTunnelPort, gid, chainInRedirect)
		if !loopbackIncluded {
			if cfg.RedirectDNS {
				e.append("nat", chainOutput, "-o lo -p tcp ! --dport 53 -m owner ! --gid-owner %s -j RETURN", gid)
			} else {
				e.append("nat", chainOutput, "-o lo -m owner ! --gid-owner %s -j RETURN", gid)
			}
		}
		e.append("nat", chainOutput, "-m owner --gid-owner %s -j RETURN", gid)
	}
	if cfg.RedirectDNS {
		// Which DNS rules exist depends on the nameservers in the pod's resolv.conf, which the
		// node does not know: accept them, do not require them.
		e.add("raw", "OUTPUT", true, "-j %s", chainOutputDNS)
		e.add("raw", "PREROUTING", true, "-j %s", chainInbound)
		e.add("nat", chainOutput, true, "-j %s", chainOutputDNS)
		e.tolerated[tableChain{"nat", chainOutputDNS}] = true
		e.tolerated[tableChain{"raw", chainOutputDNS}] = true
		e.tolerated[tableChain{"raw", chainInbound}] = true
	}
	e.append("nat", chainOutput, "-d %s -j RETURN", loopback)
	for _, c := range cidrsOf(cfg.ExcludeOutboundCIDRs, family) {
		e.append("nat", chainOutput, "-d %s -j RETURN", c)
	}
	for _, p := range cfg.IncludeOutboundPorts {
		e.append("nat", chainOutput, "-p tcp --dport %s -j %s", p, chainRedirect)
	}
	if cfg.IncludeOutboundAll {
		e.append("nat", chainOutput, "-j %s", chainRedirect)
		for _, ifc := range cfg.RerouteInterfaces {
			e.insert("nat", "PREROUTING", 1, "-i %s -j %s", ifc, chainRedirect)
		}
	} else {
		for _, c := range cidrsOf(cfg.IncludeOutboundCIDRs, family) {
			for _, ifc := range cfg.RerouteInterfaces {
				e.insert("nat", "PREROUTING", 1, "-i %s -d %s -j %s", ifc, c, chainRedirect)
			}
			e.append("nat", chainOutput, "-d %s -j %s", c, chainRedirect)
		}
	}
	if tproxy {
		e.tproxyMarks(cfg, loopback, passthrough)
	}
	return e
}

func (e *Expected) inbound(cfg intent.Config, loopback string) {
	if cfg.IncludeInboundPorts == "" {
		return
	}
	table := "nat"
	if cfg.Mode == istiopod.ModeTProxy {
		table = "mangle"
		e.append("mangle", chainDivert, "-j MARK --set-mark %d", cfg.TProxyMark)
		e.append("mangle", chainDivert, "-j ACCEPT")
		onIP := "0.0.0.0"
		if e.Family == rules.IPv6 {
			onIP = "::"
		}
		e.append("mangle", chainTProxy, "! -d %s -p tcp -j TPROXY --tproxy-mark %d/0xffffffff --on-port %d --on-ip %s",
			loopback, cfg.TProxyMark, cfg.InboundCapturePort, onIP)
	}
	e.append(table, "PREROUTING", "-p tcp -j %s", chainInbound)
	if cfg.IncludeInboundPorts == "*" {
		for _, p := range cfg.ExcludeInboundPorts {
			e.append(table, chainInbound, "-p tcp --dport %s -j RETURN", p)
		}
		if cfg.Mode == istiopod.ModeTProxy {
			e.append("mangle", chainInbound, "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j %s", chainDivert)
			e.append("mangle", chainInbound, "-p tcp -j %s", chainTProxy)
		} else {
			e.append("nat", chainInbound, "-p tcp -j %s", chainInRedirect)
		}
		return
	}
	for _, p := range cfg.IncludeInboundPortList() {
		if cfg.Mode == istiopod.ModeTProxy {
			e.append("mangle", chainInbound, "-p tcp --dport %s -m conntrack --ctstate RELATED,ESTABLISHED -j %s", p, chainDivert)
			e.append("mangle", chainInbound, "-p tcp --dport %s -j %s", p, chainTProxy)
		} else {
			e.append("nat", chainInbound, "-p tcp --dport %s -j %s", p, chainInRedirect)
		}
	}
}

// tproxyMarks are the mangle rules that keep TPROXY'd connections and the proxy's own loopback
// traffic apart.
func (e *Expected) tproxyMarks(cfg intent.Config, loopback, passthrough string) {
	mark := cfg.TProxyMark
	e.append("mangle", "PREROUTING", "-p tcp -m mark --mark %d -j CONNMARK --save-mark", mark)
	e.append("mangle", "OUTPUT", "-p tcp -o lo -m mark --mark %d -j RETURN", mark)
	for _, uid := range cfg.ProxyUID {
		e.append("mangle", "OUTPUT", "! -d %s -p tcp -o lo -m owner --uid-owner %s -j MARK --set-mark %d", loopback, uid, outboundMark)
	}
	for _, gid := range cfg.ProxyGID {
		e.append("mangle", "OUTPUT", "! -d %s -p tcp -o lo -m owner --gid-owner %s -j MARK --set-mark %d", loopback, gid, outboundMark)
	}
	e.append("mangle", "OUTPUT", "-p tcp -m connmark --mark %d -j CONNMARK --restore-mark", mark)
	e.insert("mangle", chainInbound, 1, "-p tcp -m mark --mark %d -j RETURN", mark)
	e.insert("mangle", chainInbound, 2, "-p tcp -s %s -i lo -j RETURN", passthrough)
	e.insert("mangle", chainInbound, 3, "-p tcp -i lo -m mark ! --mark %d -j RETURN", outboundMark)
}

func cidrsOf(list []netip.Prefix, family rules.Family) []string {
	var out []string
	for _, p := range list {
		if p.Addr().Is4() == (family == rules.IPv4) {
			out = append(out, p.String())
		}
	}
	return out
}

func includesLoopback(list []netip.Prefix) bool {
	for _, p := range list {
		if p.Addr().IsLoopback() || p.Contains(netip.MustParseAddr("127.0.0.1")) {
			return true
		}
	}
	return false
}

// ExpectIPv6 decides, as Istio's writer does from the pod's addresses, whether it writes IPv6 rules:
// when the first global address it sees is IPv6, or with dual stack enabled and any IPv6 address.
func ExpectIPv6(cfg intent.Config, addrs []netip.Addr) bool {
	for _, a := range addrs {
		a = a.Unmap()
		if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
			continue
		}
		if !cfg.DualStack {
			return a.Is6()
		}
		if a.Is6() {
			return true
		}
	}
	return false
}

// istioChain reports whether a chain belongs to Istio's capture.
func istioChain(name string) bool { return strings.HasPrefix(name, "ISTIO_") }
