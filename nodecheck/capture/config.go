package capture

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Annotation keys the injector (or the user) sets on a pod, and that decide its capture rules.
const (
	AnnotationInterceptionMode     = "sidecar.istio.io/interceptionMode"
	AnnotationSidecarStatus        = "sidecar.istio.io/status"
	AnnotationStatusPort           = "status.sidecar.istio.io/port"
	AnnotationProxyConfig          = "proxy.istio.io/config"
	AnnotationIncludeInboundPorts  = "traffic.sidecar.istio.io/includeInboundPorts"
	AnnotationExcludeInboundPorts  = "traffic.sidecar.istio.io/excludeInboundPorts"
	AnnotationIncludeOutboundCIDRs = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	AnnotationExcludeOutboundCIDRs = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	AnnotationIncludeOutboundPorts = "traffic.sidecar.istio.io/includeOutboundPorts"
	AnnotationExcludeOutboundPorts = "traffic.sidecar.istio.io/excludeOutboundPorts"
	AnnotationExcludeInterfaces    = "traffic.sidecar.istio.io/excludeInterfaces"
	AnnotationKubevirtInterfaces   = "traffic.sidecar.istio.io/kubevirtInterfaces"
	AnnotationRerouteInterfaces    = "istio.io/reroute-virtual-interfaces"
	AnnotationAmbientRedirection   = "ambient.istio.io/redirection"
	// AnnotationProxyUID and AnnotationProxyGID are meshdoctor's own: the injector does not write
	// the proxy's UID on the pod (it is in istio-proxy's securityContext), so discovery or the
	// --annotations file may supply it when it is not Istio's default 1337.
	AnnotationProxyUID = "meshdoctor.io/proxy-uid"
	AnnotationProxyGID = "meshdoctor.io/proxy-gid"
	// AnnotationCNIMode is meshdoctor's own as well: discovery sets it to "true" when the pod has an
	// istio-validation init container (the istio-cni plugin wrote its rules, not istio-init).
	AnnotationCNIMode = "meshdoctor.io/cni-mode"
)

// Interception modes.
const (
	ModeRedirect = "REDIRECT"
	ModeTProxy   = "TPROXY"
	ModeNone     = "NONE"
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
	// Ambient is set for a pod captured by ambient mode instead of a sidecar.
	Ambient *AmbientConfig `json:",omitempty"`
}

// ConfigFromAnnotations resolves a pod's capture configuration the way the injector template and
// the istio-cni plugin do. Malformed values are errors that name the annotation.
func ConfigFromAnnotations(a map[string]string) (Config, error) {
	cni := a[AnnotationCNIMode] == "true"
	c := Config{
		Mode:               ModeRedirect,
		ProxyPort:          15001,
		InboundCapturePort: 15006,
		InboundTunnelPort:  15008,
		ProxyUID:           []string{"1337"},
		ProxyGID:           []string{"1337"},
		TProxyMark:         1337,
		CNIMode:            cni,
	}
	if m := strings.TrimSpace(a[AnnotationInterceptionMode]); m != "" {
		m = strings.ToUpper(m)
		switch m {
		case ModeRedirect, ModeTProxy, ModeNone:
			c.Mode = m
		default:
			return c, fmt.Errorf("annotation %s: unknown interception mode %q", AnnotationInterceptionMode, m)
		}
	}
	if v, ok := a[AnnotationProxyUID]; ok {
		c.ProxyUID = splitList(v)
	}
	if v, ok := a[AnnotationProxyGID]; ok {
		c.ProxyGID = splitList(v)
	} else if _, ok := a[AnnotationProxyUID]; ok {
		c.ProxyGID = c.ProxyUID
	}
	if c.Mode == ModeTProxy {
		// The injector runs the TPROXY proxy as 1337 whatever the pod asks.
		c.ProxyUID, c.ProxyGID = []string{"1337"}, []string{"1337"}
	}

	c.IncludeInboundPorts = "*"
	if v, ok := a[AnnotationIncludeInboundPorts]; ok {
		c.IncludeInboundPorts = strings.TrimSpace(v)
	}
	if err := validatePorts(AnnotationIncludeInboundPorts, c.IncludeInboundPorts, true); err != nil {
		return c, err
	}

	// istio-init is always told to skip Envoy's own ports; the status port joins them unless
	// disabled with port 0. istio-cni adds 15020,15021,15090 whatever the status port.
	userExclude := splitList(a[AnnotationExcludeInboundPorts])
	if err := validatePorts(AnnotationExcludeInboundPorts, strings.Join(userExclude, ","), false); err != nil {
		return c, err
	}
	if cni {
		c.ExcludeInboundPorts = dedup(append(userExclude, "15020", "15021", "15090"))
	} else {
		statusPort := "15020"
		if v, ok := a[AnnotationStatusPort]; ok {
			statusPort = strings.TrimSpace(v)
		}
		ex := []string{"15090", "15021"}
		if statusPort != "" && statusPort != "0" {
			ex = append(ex, statusPort)
		}
		c.ExcludeInboundPorts = append(ex, userExclude...)
	}

	include := "*"
	if v, ok := a[AnnotationIncludeOutboundCIDRs]; ok {
		include = strings.TrimSpace(v)
	}
	if include == "*" {
		c.IncludeOutboundAll = true
	} else {
		cidrs, err := parseCIDRs(AnnotationIncludeOutboundCIDRs, include)
		if err != nil {
			return c, err
		}
		c.IncludeOutboundCIDRs = cidrs
	}
	cidrs, err := parseCIDRs(AnnotationExcludeOutboundCIDRs, a[AnnotationExcludeOutboundCIDRs])
	if err != nil {
		return c, err
	}
	c.ExcludeOutboundCIDRs = cidrs

	c.IncludeOutboundPorts = splitList(a[AnnotationIncludeOutboundPorts])
	if err := validatePorts(AnnotationIncludeOutboundPorts, strings.Join(c.IncludeOutboundPorts, ","), false); err != nil {
		return c, err
	}
	if v, ok := a[AnnotationExcludeOutboundPorts]; ok {
		c.ExcludeOutboundPorts = splitList(v)
	} else if cni {
		// istio-cni's default keeps the kubelet's probes of the status port out of the proxy.
		c.ExcludeOutboundPorts = []string{"15020"}
	}
	if err := validatePorts(AnnotationExcludeOutboundPorts, strings.Join(c.ExcludeOutboundPorts, ","), false); err != nil {
		return c, err
	}
	c.ExcludeInterfaces = splitList(a[AnnotationExcludeInterfaces])
	if v, ok := a[AnnotationRerouteInterfaces]; ok {
		c.RerouteInterfaces = splitList(v)
	} else {
		c.RerouteInterfaces = splitList(a[AnnotationKubevirtInterfaces])
	}

	meta, err := proxyMetadata(a[AnnotationProxyConfig])
	if err != nil {
		return c, err
	}
	c.RedirectDNS = isTrue(meta["ISTIO_META_DNS_CAPTURE"])
	c.DualStack = isTrue(meta["ISTIO_DUAL_STACK"])
	c.DropInvalid = isTrue(meta["INVALID_DROP"])
	return c, nil
}

// proxyMetadata reads proxyMetadata from the proxy.istio.io/config annotation (YAML or JSON).
func proxyMetadata(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	raw, err := yaml.YAMLToJSON([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("annotation %s is not valid YAML: %w", AnnotationProxyConfig, err)
	}
	var pc struct {
		ProxyMetadata map[string]any `json:"proxyMetadata"`
	}
	if err := json.Unmarshal(raw, &pc); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationProxyConfig, err)
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
