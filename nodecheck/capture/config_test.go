package capture

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestConfigFromAnnotationsErrors(t *testing.T) {
	cases := map[string]map[string]string{
		"mode":         {AnnotationInterceptionMode: "MAGIC"},
		"inbound port": {AnnotationIncludeInboundPorts: "80,http"},
		"port zero":    {AnnotationExcludeOutboundPorts: "0"},
		"cidr":         {AnnotationExcludeOutboundCIDRs: "10.0.0.0/33"},
		"proxy config": {AnnotationProxyConfig: "proxyMetadata: [unclosed"},
	}
	for name, a := range cases {
		_, err := ConfigFromAnnotations(a)
		if err == nil {
			t.Errorf("%s: no error for %v", name, a)
			continue
		}
		for k := range a {
			if !strings.Contains(err.Error(), k) {
				t.Errorf("%s: error %q does not name the annotation %s", name, err, k)
			}
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	sidecar, err := ConfigFromAnnotations(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := sidecar.ExcludeInboundPorts; !slices.Equal(got, []string{"15090", "15021", "15020"}) {
		t.Errorf("istio-init excludes inbound %v", got)
	}
	if len(sidecar.ExcludeOutboundPorts) != 0 {
		t.Errorf("istio-init excludes outbound %v by default", sidecar.ExcludeOutboundPorts)
	}
	// istio-cni keeps the status port out of outbound capture and always skips Envoy's ports.
	cni, err := ConfigFromAnnotations(map[string]string{AnnotationCNIMode: "true", AnnotationExcludeInboundPorts: "9000,15020"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cni.ExcludeInboundPorts; !slices.Equal(got, []string{"9000", "15020", "15021", "15090"}) {
		t.Errorf("istio-cni excludes inbound %v", got)
	}
	if got := cni.ExcludeOutboundPorts; !slices.Equal(got, []string{"15020"}) {
		t.Errorf("istio-cni excludes outbound %v", got)
	}
	noStatus, _ := ConfigFromAnnotations(map[string]string{AnnotationStatusPort: "0"})
	if got := noStatus.ExcludeInboundPorts; !slices.Equal(got, []string{"15090", "15021"}) {
		t.Errorf("status port 0 still excluded: %v", got)
	}
}

func TestExpectIPv6(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00::5")
	ll := netip.MustParseAddr("fe80::1")
	cases := []struct {
		name      string
		dualStack bool
		addrs     []netip.Addr
		want      bool
	}{
		{"ipv4 only", false, []netip.Addr{v4}, false},
		{"dual stack, flag off: first address wins", false, []netip.Addr{v4, v6}, false},
		{"dual stack, flag on", true, []netip.Addr{v4, v6}, true},
		{"ipv6 only", false, []netip.Addr{ll, v6}, true},
		{"link-local only", false, []netip.Addr{ll}, false},
	}
	for _, c := range cases {
		if got := ExpectIPv6(Config{DualStack: c.dualStack}, c.addrs); got != c.want {
			t.Errorf("%s: ExpectIPv6 = %v, want %v", c.name, got, c.want)
		}
	}
}
