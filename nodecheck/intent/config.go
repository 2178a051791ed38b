// Package intent resolves how Istio meant a pod to be captured: what its rule writer (istio-init,
// the istio-cni plugin, istio-cni's ambient node agent) was told for that pod.
//
// # Sources
//
// In istio-init mode, istio-init's argv and environment as the runtime started it, parsed as
// istio-iptables parses them (Resolve, ParseInitArgs, FromInitArgs): Istio's injection template
// puts the mesh-wide values only there. In CNI mode the pod's annotations, which the injector
// fills with what it resolved, cross-checked against istio-validation's argv. Otherwise the
// annotations with Istio's defaults, and the runtime's facts on the target (CNI mode, the proxy's
// user). The resolved Config is the oracle the capture check builds the expected rules from;
// Intent says which source it came from and where the annotations drift from the argv.
package intent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// Config is what Istio's rule writer was told for one pod, resolved from its annotations with
// Istio's defaults. It is meshdoctor's own reading of those inputs.
type Config struct {
	Mode                 string
	ProxyPort            uint16 // outbound capture, -p
	InboundCapturePort   uint16 // -z
	InboundTunnelPort    uint16 // -e, HBONE
	ProxyUID             []string
	ProxyGID             []string
	IncludeInboundPorts  string // "*" or a port list
	ExcludeInboundPorts  []string
	IncludeOutboundAll   bool
	IncludeOutboundCIDRs []netip.Prefix
	ExcludeOutboundCIDRs []netip.Prefix
	IncludeOutboundPorts []string
	ExcludeOutboundPorts []string
	ExcludeInterfaces    []string
	RerouteInterfaces    []string
	RedirectDNS          bool
	DualStack            bool
	DropInvalid          bool
	TProxyMark           uint32
	// CNIMode is true when the istio-cni plugin wrote the rules (its defaults differ slightly).
	CNIMode bool
	// NativeNftables is istio-init's --native-nftables: Istio's own nftables tables, not iptables.
	NativeNftables bool `json:",omitempty"`
	// Ambient is set for a pod captured by ambient mode instead of a sidecar.
	Ambient *AmbientConfig `json:",omitempty"`
}

// FromAnnotations resolves the capture configuration of a pod known only by its annotations
// (istio-init mode, the proxy as Istio's default user).
func FromAnnotations(a map[string]string) (Config, error) {
	return fromTargetAnnotations(nodecheck.Target{Annotations: a})
}

// istioDefaults is what Istio's rule writers use when told nothing: Envoy's ports, the proxy's
// user 1337 as UID and GID, REDIRECT, TPROXY mark 1337.
func istioDefaults(cni bool) Config {
	return Config{
		Mode:               istiopod.ModeRedirect,
		ProxyPort:          15001,
		InboundCapturePort: 15006,
		InboundTunnelPort:  15008,
		ProxyUID:           []string{"1337"},
		ProxyGID:           []string{"1337"},
		TProxyMark:         1337,
		CNIMode:            cni,
	}
}

// fromTargetAnnotations resolves a pod's capture configuration the way the injector template and
// the istio-cni plugin do, from its annotations and what discovery learned of it (CNI mode, the
// proxy's user). Malformed values are errors that name the annotation.
func fromTargetAnnotations(t nodecheck.Target) (Config, error) {
	a := t.Annotations
	cni := t.CNIMode
	c := istioDefaults(cni)
	if m := strings.TrimSpace(a[istiopod.AnnotationInterceptionMode]); m != "" {
		m = strings.ToUpper(m)
		switch m {
		case istiopod.ModeRedirect, istiopod.ModeTProxy, istiopod.ModeNone:
			c.Mode = m
		default:
			return c, fmt.Errorf("annotation %s: unknown interception mode %q", istiopod.AnnotationInterceptionMode, m)
		}
	}
	if u := t.ProxyUser; u != nil && u.UID >= 0 {
		c.ProxyUID = []string{strconv.FormatInt(u.UID, 10)}
		c.ProxyGID = c.ProxyUID
		if u.GID >= 0 {
			c.ProxyGID = []string{strconv.FormatInt(u.GID, 10)}
		}
	}
	if c.Mode == istiopod.ModeTProxy {
		// The injector runs the TPROXY proxy as 1337 whatever the pod asks.
		c.ProxyUID, c.ProxyGID = []string{"1337"}, []string{"1337"}
	}

	c.IncludeInboundPorts = "*"
	if v, ok := a[istiopod.AnnotationIncludeInboundPorts]; ok {
		c.IncludeInboundPorts = strings.TrimSpace(v)
	}
	if err := validatePorts(istiopod.AnnotationIncludeInboundPorts, c.IncludeInboundPorts, true); err != nil {
		return c, err
	}

	// istio-init is always told to skip Envoy's own ports; the status port joins them unless
	// disabled with port 0. istio-cni adds 15020,15021,15090 whatever the status port.
	userExclude := splitList(a[istiopod.AnnotationExcludeInboundPorts])
	if err := validatePorts(istiopod.AnnotationExcludeInboundPorts, strings.Join(userExclude, ","), false); err != nil {
		return c, err
	}
	if cni {
		c.ExcludeInboundPorts = dedup(append(userExclude, "15020", "15021", "15090"))
	} else {
		statusPort := "15020"
		if v, ok := a[istiopod.AnnotationStatusPort]; ok {
			statusPort = strings.TrimSpace(v)
		}
		ex := []string{"15090", "15021"}
		if statusPort != "" {
			// pilot-agent's status port, as proxyready reads it: a port, or 0 for none.
			n, err := strconv.ParseUint(statusPort, 10, 16)
			if err != nil {
				return c, fmt.Errorf("annotation %s: %q is not a port", istiopod.AnnotationStatusPort, statusPort)
			}
			if n != 0 {
				ex = append(ex, statusPort)
			}
		}
		c.ExcludeInboundPorts = append(ex, userExclude...)
	}

	include := "*"
	if v, ok := a[istiopod.AnnotationIncludeOutboundCIDRs]; ok {
		include = strings.TrimSpace(v)
	}
	if include == "*" {
		c.IncludeOutboundAll = true
	} else {
		cidrs, err := parseCIDRs(istiopod.AnnotationIncludeOutboundCIDRs, include)
		if err != nil {
			return c, err
		}
		c.IncludeOutboundCIDRs = cidrs
	}
	cidrs, err := parseCIDRs(istiopod.AnnotationExcludeOutboundCIDRs, a[istiopod.AnnotationExcludeOutboundCIDRs])
	if err != nil {
		return c, err
	}
	c.ExcludeOutboundCIDRs = cidrs

	c.IncludeOutboundPorts = splitList(a[istiopod.AnnotationIncludeOutboundPorts])
	if err := validatePorts(istiopod.AnnotationIncludeOutboundPorts, strings.Join(c.IncludeOutboundPorts, ","), false); err != nil {
		return c, err
	}
	if v, ok := a[istiopod.AnnotationExcludeOutboundPorts]; ok {
		c.ExcludeOutboundPorts = splitList(v)
	} else if cni {
		// istio-cni's default keeps the kubelet's probes of the status port out of the proxy.
		c.ExcludeOutboundPorts = []string{"15020"}
	}
	if err := validatePorts(istiopod.AnnotationExcludeOutboundPorts, strings.Join(c.ExcludeOutboundPorts, ","), false); err != nil {
		return c, err
	}
	c.ExcludeInterfaces = splitList(a[istiopod.AnnotationExcludeInterfaces])
	if v, ok := a[istiopod.AnnotationRerouteInterfaces]; ok {
		c.RerouteInterfaces = splitList(v)
	} else {
		c.RerouteInterfaces = splitList(a[istiopod.AnnotationKubevirtInterfaces])
	}

	meta, err := ProxyMetadata(a[istiopod.AnnotationProxyConfig])
	if err != nil {
		return c, err
	}
	c.RedirectDNS = isTrue(meta["ISTIO_META_DNS_CAPTURE"])
	c.DualStack = isTrue(meta["ISTIO_DUAL_STACK"])
	c.DropInvalid = isTrue(meta["INVALID_DROP"])
	return c, nil
}

// ProxyMetadata reads proxyMetadata from the proxy.istio.io/config annotation (YAML or JSON): the
// variables the injection template also renders into istio-init's env.
func ProxyMetadata(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	raw, err := yaml.YAMLToJSON([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("annotation %s is not valid YAML: %w", istiopod.AnnotationProxyConfig, err)
	}
	var pc struct {
		ProxyMetadata map[string]any `json:"proxyMetadata"`
	}
	if err := json.Unmarshal(raw, &pc); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", istiopod.AnnotationProxyConfig, err)
	}
	out := map[string]string{}
	for k, v := range pc.ProxyMetadata {
		out[k] = fmt.Sprint(v)
	}
	return out, nil
}

func isTrue(s string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	return err == nil && b
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func dedup(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func validatePorts(key, list string, wildcard bool) error {
	for _, p := range splitList(list) {
		if wildcard && p == "*" {
			continue
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("annotation %s: %q is not a port", key, p)
		}
	}
	return nil
}

func parseCIDRs(key, list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range splitList(list) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %q is not a CIDR: %w", key, s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// IncludeInboundPortList is IncludeInboundPorts as a list, when it is not "*".
func (c Config) IncludeInboundPortList() []string { return splitList(c.IncludeInboundPorts) }
