package intent

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// FromInitArgs resolves the capture configuration istio-iptables built from what it was told,
// with istio-iptables' own defaults (not the injector's: without -i or -b it captures nothing).
// cni says the istio-cni plugin wrote the rules. A value istio-iptables would have refused is an
// error that names its flag.
func FromInitArgs(a InitArgs, cni bool) (Config, error) {
	c := istioDefaults(cni)
	v := a.Values
	var err error
	port := func(flag string, dst *uint16) {
		if s, ok := v[flag]; ok && err == nil {
			n, perr := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
			if perr != nil || n == 0 {
				err = fmt.Errorf("istio-iptables --%s (%s): %q is not a port", flag, a.From[flag], s)
			}
			*dst = uint16(n)
		}
	}
	boolean := func(flag string, dst *bool) {
		if s, ok := v[flag]; ok && err == nil {
			b, perr := strconv.ParseBool(strings.TrimSpace(s))
			if perr != nil {
				err = fmt.Errorf("istio-iptables --%s (%s): %q is not a boolean", flag, a.From[flag], s)
			}
			*dst = b
		}
	}
	ports := func(flag string, wildcard bool) []string {
		list := splitList(v[flag])
		if err == nil {
			if perr := validatePorts(flag, strings.Join(list, ","), wildcard); perr != nil {
				err = fmt.Errorf("istio-iptables --%s (%s): %w", flag, a.From[flag], perr)
			}
		}
		return list
	}
	cidrs := func(flag string) []string {
		return splitList(v[flag])
	}

	if m := strings.ToUpper(strings.TrimSpace(v["istio-inbound-interception-mode"])); m != "" {
		switch m {
		case istiopod.ModeRedirect, istiopod.ModeTProxy, istiopod.ModeNone:
			c.Mode = m
		default:
			return c, fmt.Errorf("istio-iptables -m (%s): unknown interception mode %q", a.From["istio-inbound-interception-mode"], m)
		}
	}
	port("envoy-port", &c.ProxyPort)
	port("inbound-capture-port", &c.InboundCapturePort)
	port("inbound-tunnel-port", &c.InboundTunnelPort)
	if err != nil {
		return c, err
	}
	// A list of no id (",") is no default either: istio-iptables would write an owner match
	// without an id, which iptables refuses.
	if s := strings.TrimSpace(v["proxy-uid"]); s != "" {
		if c.ProxyUID = splitList(s); len(c.ProxyUID) == 0 {
			return c, fmt.Errorf("istio-iptables -u (%s): %q names no user", a.From["proxy-uid"], s)
		}
	}
	c.ProxyGID = c.ProxyUID
	if s := strings.TrimSpace(v["proxy-gid"]); s != "" {
		if c.ProxyGID = splitList(s); len(c.ProxyGID) == 0 {
			return c, fmt.Errorf("istio-iptables -g (%s): %q names no group", a.From["proxy-gid"], s)
		}
	}
	c.IncludeInboundPorts = strings.TrimSpace(v["istio-inbound-ports"])
	if err := validatePorts("-b", c.IncludeInboundPorts, true); err != nil {
		return c, fmt.Errorf("istio-iptables %w", err)
	}
	c.ExcludeInboundPorts = ports("istio-local-exclude-ports", false)
	if err != nil {
		return c, err
	}
	if include := strings.TrimSpace(v["istio-service-cidr"]); include == "*" {
		c.IncludeOutboundAll = true
	} else if c.IncludeOutboundCIDRs, err = parseCIDRs("-i", include); err != nil {
		return c, fmt.Errorf("istio-iptables %w", err)
	}
	if c.ExcludeOutboundCIDRs, err = parseCIDRs("-x", strings.Join(cidrs("istio-service-exclude-cidr"), ",")); err != nil {
		return c, fmt.Errorf("istio-iptables %w", err)
	}
	c.IncludeOutboundPorts = ports("istio-outbound-ports", false)
	c.ExcludeOutboundPorts = ports("istio-local-outbound-ports-exclude", false)
	c.ExcludeInterfaces = splitList(v["istio-exclude-interfaces"])
	c.RerouteInterfaces = splitList(v["kube-virt-interfaces"])
	if s, ok := v["istio-inbound-tproxy-mark"]; ok {
		n, perr := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if perr != nil {
			return c, fmt.Errorf("istio-iptables -t (%s): %q is not a mark", a.From["istio-inbound-tproxy-mark"], s)
		}
		c.TProxyMark = uint32(n)
	}
	boolean("redirect-dns", &c.RedirectDNS)
	boolean("dual-stack", &c.DualStack)
	boolean("drop-invalid", &c.DropInvalid)
	boolean("native-nftables", &c.NativeNftables)
	return c, err
}
