package kubelet

import (
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// The containers of a sidecar-injected pod as Istio's injector writes them, for tests that run
// such pods on a test node.

// SidecarStatus is the sidecar.istio.io/status annotation Istio's injector writes for these init
// containers. A last init container named istio-proxy is a native sidecar.
func SidecarStatus(inits ...string) string {
	containers := `["istio-proxy"]`
	if len(inits) > 0 && inits[len(inits)-1] == istiopod.ContainerIstioProxy {
		containers = `[]` // native sidecar: istio-proxy is an init container
	}
	return `{"initContainers":["` + strings.Join(inits, `","`) + `"],"containers":` + containers +
		`,"volumes":["workload-socket","credential-socket","workload-certs","istio-envoy","istio-data","istio-podinfo",` +
		`"istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}`
}

// IstioInit is istio-init as the injector renders it with Istio's defaults (InjectedInit of
// DefaultMeshValues): pilot-agent istio-iptables as root with only the given capabilities (by
// default NET_ADMIN and NET_RAW, as the injector grants).
func IstioInit(caps ...string) Container {
	c := InjectedInit(DefaultMeshValues())
	if caps != nil {
		c.CapAdd = caps
	}
	return c
}

// IstioValidation is the CNI-mode init container: the same tool checks that istio-cni's rules
// redirect, as the proxy's user with no capabilities.
func IstioValidation() Container {
	return Container{
		Name: istiopod.ContainerIstioValidation,
		Args: append(append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
			"--run-validation", "--skip-rule-apply"),
		RunAsUser: Int64(1337), RunAsGroup: Int64(1337), CapDrop: []string{"ALL"},
	}
}

// IstioProxy stands in for Istio's proxy, as the proxy's user: test/cmd/proxy-standin answers 200
// on pilot-agent's readiness URL (localhost:15020/healthz/ready), so the pod's proxy is ready,
// and listens where a ready Envoy has its virtual outbound and inbound listeners (15001, 15006).
func IstioProxy() Container {
	return Container{Name: istiopod.ContainerIstioProxy, Command: []string{testbed.ProxyStandIn},
		RunAsUser: Int64(1337), RunAsGroup: Int64(1337), CapDrop: []string{"ALL"}}
}

// App is an application container that only sleeps.
func App() Container {
	return Container{Name: "app", Command: []string{"sleep", "3600"}}
}

// InjectedPod is a sidecar-injected pod with Istio's default mesh values (InjectedPodWith):
// istio-init writing the rules with Istio's own tool (with initCaps, see IstioInit), the stand-in
// proxy, an app.
func InjectedPod(namespace, name string, initCaps ...string) Pod {
	p := InjectedPodWith(namespace, name, DefaultMeshValues())
	if initCaps != nil {
		p.InitContainers[0].CapAdd = initCaps
	}
	return p
}
