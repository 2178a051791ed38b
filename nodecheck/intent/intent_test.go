package intent

import (
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

func initContainer(name string, argv ...string) nodecheck.Container {
	return nodecheck.Container{Name: name, Role: nodecheck.RoleInit, Args: argv, UID: -1, GID: -1}
}

// meshWideArgv is istio-init as the template renders it for a mesh whose values exclude
// 10.0.0.0/8 and capture only some inbound ports: nothing of it is on the pod's annotations.
var meshWideArgv = []string{"/usr/local/bin/pilot-agent", "istio-iptables", "-p", "15001", "-z", "15006",
	"-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "10.0.0.0/8", "-b", "8080,9090", "-d", "15090,15021,15020",
	"--log_output_level=default:info"}

func TestResolve(t *testing.T) {
	cases := []struct {
		name       string
		target     nodecheck.Target
		source     Source
		container  string
		excludeOut string // the resolved ExcludeOutboundCIDRs, joined
		drift      []string
	}{
		{
			name:       "istio-init mode: the args are the oracle",
			target:     nodecheck.Target{Containers: []nodecheck.Container{initContainer(istiopod.ContainerIstioInit, meshWideArgv...)}},
			source:     SourceInitArgs,
			container:  istiopod.ContainerIstioInit,
			excludeOut: "10.0.0.0/8",
		},
		{
			name: "an annotation edited after injection drifts; the args still decide",
			target: nodecheck.Target{
				Annotations: map[string]string{istiopod.AnnotationExcludeOutboundCIDRs: "192.168.0.0/16",
					istiopod.AnnotationIncludeInboundPorts: "9090, 8080", istiopod.AnnotationStatusPort: "15020"},
				Containers: []nodecheck.Container{initContainer(istiopod.ContainerIstioInit, meshWideArgv...)},
			},
			source:     SourceInitArgs,
			container:  istiopod.ContainerIstioInit,
			excludeOut: "10.0.0.0/8",
			drift:      []string{istiopod.AnnotationExcludeOutboundCIDRs},
		},
		{
			name: "CNI mode: the annotations decide, istio-validation cross-checks",
			target: nodecheck.Target{
				CNIMode:     true,
				Annotations: map[string]string{istiopod.AnnotationExcludeOutboundCIDRs: "172.16.0.0/12"},
				Containers: []nodecheck.Container{initContainer(istiopod.ContainerIstioValidation,
					append(meshWideArgv[:len(meshWideArgv):len(meshWideArgv)], "--run-validation", "--skip-rule-apply")...)},
			},
			source:     SourceAnnotations,
			container:  istiopod.ContainerIstioValidation,
			excludeOut: "172.16.0.0/12",
			drift:      []string{istiopod.AnnotationExcludeOutboundCIDRs},
		},
		{
			name: "proxyMetadata edited after injection: istio-init's env did not get it",
			target: nodecheck.Target{
				Annotations: map[string]string{istiopod.AnnotationProxyConfig: `{"proxyMetadata":{"ISTIO_DUAL_STACK":"true","ISTIO_META_DNS_CAPTURE":"maybe"}}`},
				Containers:  []nodecheck.Container{initContainer(istiopod.ContainerIstioInit, meshWideArgv...)},
			},
			source: SourceInitArgs, container: istiopod.ContainerIstioInit, excludeOut: "10.0.0.0/8",
			drift: []string{istiopod.AnnotationProxyConfig + " proxyMetadata.ISTIO_DUAL_STACK"},
		},
		{
			name: "proxyMetadata as istio-init's env has it",
			target: func() nodecheck.Target {
				init := initContainer(istiopod.ContainerIstioInit, meshWideArgv...)
				init.Env = []string{"ISTIO_DUAL_STACK=true"}
				return nodecheck.Target{
					Annotations: map[string]string{istiopod.AnnotationProxyConfig: "proxyMetadata:\n  ISTIO_DUAL_STACK: \"true\"\n"},
					Containers:  []nodecheck.Container{init},
				}
			}(),
			source: SourceInitArgs, container: istiopod.ContainerIstioInit, excludeOut: "10.0.0.0/8",
		},
		{
			name:   "no init argv and capture annotations",
			target: nodecheck.Target{Annotations: map[string]string{istiopod.AnnotationExcludeOutboundCIDRs: "10.1.0.0/16"}},
			source: SourceAnnotations, excludeOut: "10.1.0.0/16",
		},
		{
			name:   "nothing says how: Istio's defaults",
			target: nodecheck.Target{Annotations: map[string]string{istiopod.AnnotationSidecarStatus: "{}"}},
			source: SourceDefaults,
		},
		{
			name: "reroute-virtual-interfaces wins over kubevirtInterfaces, as in the template",
			target: nodecheck.Target{
				Annotations: map[string]string{istiopod.AnnotationRerouteInterfaces: "eth1",
					istiopod.AnnotationKubevirtInterfaces: "eth9"},
				Containers: []nodecheck.Container{initContainer(istiopod.ContainerIstioInit,
					append(meshWideArgv[:len(meshWideArgv):len(meshWideArgv)], "-k", "eth1")...)},
			},
			source: SourceInitArgs, container: istiopod.ContainerIstioInit, excludeOut: "10.0.0.0/8",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in, err := Resolve(c.target)
			if err != nil {
				t.Fatal(err)
			}
			if in.Source != c.source || in.InitContainer != c.container {
				t.Errorf("source %q from %q, want %q from %q", in.Source, in.InitContainer, c.source, c.container)
			}
			var excl []string
			for _, p := range in.Config.ExcludeOutboundCIDRs {
				excl = append(excl, p.String())
			}
			if got := strings.Join(excl, ","); got != c.excludeOut {
				t.Errorf("excluded outbound %q, want %q", got, c.excludeOut)
			}
			var drifted []string
			for _, d := range in.Drift {
				drifted = append(drifted, d.Annotation)
			}
			if strings.Join(drifted, ",") != strings.Join(c.drift, ",") {
				t.Errorf("drift %+v, want %v", in.Drift, c.drift)
			}
		})
	}
}

func TestResolveErrorsSayWhere(t *testing.T) {
	bad := nodecheck.Target{Containers: []nodecheck.Container{initContainer(istiopod.ContainerIstioInit, "pilot-agent", "istio-iptables", "-p")}}
	if _, err := Resolve(bad); err == nil || !strings.Contains(err.Error(), "istio-init's command line") {
		t.Errorf("argv without a value: %v", err)
	}
	wrong := nodecheck.Target{Containers: []nodecheck.Container{initContainer(istiopod.ContainerIstioInit, "pilot-agent", "istio-iptables", "-m", "MAGIC")}}
	if _, err := Resolve(wrong); err == nil || !strings.Contains(err.Error(), "istio-init: istio-iptables -m") {
		t.Errorf("bad mode: %v", err)
	}
}
