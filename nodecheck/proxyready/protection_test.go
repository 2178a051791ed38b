package proxyready

import (
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// The annotations are as Istio's injector writes them: sidecar.istio.io/status with the
// containers it added, proxy.istio.io/config as the user wrote it (YAML or JSON).
func TestProtection(t *testing.T) {
	native := `{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["istio-envoy"],"revision":"default"}`
	classic := `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"revision":"default"}`
	cases := []struct {
		name        string
		annotations map[string]string
		holdDefault bool
		want        Protection
	}{
		{"nothing", nil, false, ProtectionNone},
		{"classic injection", map[string]string{istiopod.AnnotationSidecarStatus: classic}, false, ProtectionNone},
		{"native sidecar", map[string]string{istiopod.AnnotationSidecarStatus: native}, false, ProtectionNativeSidecar},
		{"native sidecar wins over the hold", map[string]string{istiopod.AnnotationSidecarStatus: native,
			istiopod.AnnotationProxyConfig: "holdApplicationUntilProxyStarts: true"}, false, ProtectionNativeSidecar},
		{"hold, YAML", map[string]string{istiopod.AnnotationProxyConfig: "holdApplicationUntilProxyStarts: true\nproxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"}, false, ProtectionHold},
		{"hold, JSON", map[string]string{istiopod.AnnotationProxyConfig: `{"holdApplicationUntilProxyStarts": true}`}, false, ProtectionHold},
		{"mesh default", map[string]string{istiopod.AnnotationSidecarStatus: classic}, true, ProtectionHold},
		{"pod turns the mesh default off", map[string]string{istiopod.AnnotationProxyConfig: "holdApplicationUntilProxyStarts: false"}, true, ProtectionNone},
		{"other proxy config, mesh default", map[string]string{istiopod.AnnotationProxyConfig: "concurrency: 2"}, true, ProtectionHold},
		{"malformed proxy config", map[string]string{istiopod.AnnotationProxyConfig: "holdApplicationUntilProxyStarts: [yes"}, false, ProtectionUnknown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := protectionOf(tc.annotations, tc.holdDefault)
			if got.Kind != tc.want {
				t.Errorf("got %s (%s), want %s", got.Kind, got.Source, tc.want)
			}
			if got.Source == "" {
				t.Error("no source")
			}
		})
	}
}

func TestStatusPort(t *testing.T) {
	cases := []struct {
		v       string
		set     bool
		want    uint16
		wantErr bool
	}{
		{"", false, 15020, false},
		{"15021", true, 15021, false},
		{" 0 ", true, 0, false},
		{"http", true, 0, true},
		{"70000", true, 0, true},
	}
	for _, tc := range cases {
		a := map[string]string{}
		if tc.set {
			a[istiopod.AnnotationStatusPort] = tc.v
		}
		got, err := statusPort(a)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%q: got %d, %v; want %d, error %v", tc.v, got, err, tc.want, tc.wantErr)
		}
	}
}

// The pod's age runs from its first container, whatever order discovery lists them in; a pod
// without times has no age.
func TestPodAge(t *testing.T) {
	now := t0.Add(time.Minute)
	tgt := nodecheck.Target{Containers: []nodecheck.Container{
		{Name: "app", CreatedAt: t0.Add(2 * time.Second), StartedAt: t0.Add(3 * time.Second)},
		{Name: "istio-init", CreatedAt: t0, StartedAt: t0.Add(time.Second)},
	}}
	if age, ok := podAge(tgt, now); !ok || age != time.Minute {
		t.Errorf("got %s %v, want 1m", age, ok)
	}
	if _, ok := podAge(nodecheck.Target{Containers: []nodecheck.Container{{Name: "app"}}}, now); ok {
		t.Error("a pod without times has an age")
	}
}

func TestSkip(t *testing.T) {
	cases := []struct {
		name string
		t    nodecheck.Target
		skip bool
	}{
		{"bare netns", nodecheck.Target{Netns: "/x"}, false},
		{"bare ambient netns", nodecheck.Target{Netns: "/x", Annotations: map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}}, true},
		{"no netns", nodecheck.Target{}, true},
		{"pod without proxy", nodecheck.Target{Netns: "/x", Containers: []nodecheck.Container{{Name: "app"}}}, true},
		{"pod with proxy", nodecheck.Target{Netns: "/x", Containers: []nodecheck.Container{{Name: "app"}, {Name: "istio-proxy"}}}, false},
	}
	for _, tc := range cases {
		if got := skipReason(tc.t) != ""; got != tc.skip {
			t.Errorf("%s: skipped %v, want %v", tc.name, got, tc.skip)
		}
	}
}
