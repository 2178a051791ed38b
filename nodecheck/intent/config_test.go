package intent

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

func TestConfigFromAnnotationsErrors(t *testing.T) {
	cases := map[string]map[string]string{
		"mode":         {istiopod.AnnotationInterceptionMode: "MAGIC"},
		"inbound port": {istiopod.AnnotationIncludeInboundPorts: "80,http"},
		"port zero":    {istiopod.AnnotationExcludeOutboundPorts: "0"},
		"cidr":         {istiopod.AnnotationExcludeOutboundCIDRs: "10.0.0.0/33"},
		"proxy config": {istiopod.AnnotationProxyConfig: "proxyMetadata: [unclosed"},
		// Found by FuzzAnnotations: the status port went into istio-init's -d list unread.
		"status port": {istiopod.AnnotationStatusPort: "A"},
	}
	for name, a := range cases {
		_, err := FromAnnotations(a)
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
	sidecar, err := FromAnnotations(nil)
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
	cni, err := fromTargetAnnotations(nodecheck.Target{CNIMode: true, Annotations: map[string]string{istiopod.AnnotationExcludeInboundPorts: "9000,15020"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := cni.ExcludeInboundPorts; !slices.Equal(got, []string{"9000", "15020", "15021", "15090"}) {
		t.Errorf("istio-cni excludes inbound %v", got)
	}
	if got := cni.ExcludeOutboundPorts; !slices.Equal(got, []string{"15020"}) {
		t.Errorf("istio-cni excludes outbound %v", got)
	}
	noStatus, _ := FromAnnotations(map[string]string{istiopod.AnnotationStatusPort: "0"})
	if got := noStatus.ExcludeInboundPorts; !slices.Equal(got, []string{"15090", "15021"}) {
		t.Errorf("status port 0 still excluded: %v", got)
	}
}
