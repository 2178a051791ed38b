package kubelet

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// MeshValues are the mesh-wide injection values that reach istio-init: Helm's
// values.global.proxy.* and values.global.nativeNftables, meshConfig's listen ports, the
// injector's proxy UID and GID, the default interception mode and proxyMetadata. The injection
// template renders them only into istio-init's argv and env, never into an annotation, which is
// why meshdoctor has to read them from the runtime. DefaultMeshValues has Istio's defaults.
type MeshValues struct {
	// ProxyListenPort and ProxyInboundListenPort are meshConfig's (-p, -z); 0 renders Istio's
	// 15001 and 15006.
	ProxyListenPort, ProxyInboundListenPort int
	// ProxyUID and ProxyGID are the injector's (OpenShift sets them per namespace); 0 renders
	// 1337, as the template's `default` does. -u is always 1337 in TPROXY mode.
	ProxyUID, ProxyGID int64
	// InterceptionMode is ProxyConfig.interceptionMode: REDIRECT, TPROXY or NONE (-m).
	InterceptionMode string
	// IncludeIPRanges, ExcludeIPRanges: -i, -x.
	IncludeIPRanges, ExcludeIPRanges string
	// IncludeInboundPorts: -b. ExcludeInboundPorts and StatusPort make -d (after 15090,15021;
	// StatusPort 0 adds nothing).
	IncludeInboundPorts, ExcludeInboundPorts string
	StatusPort                               int
	// IncludeOutboundPorts, ExcludeOutboundPorts: -q, -o, rendered only when set.
	IncludeOutboundPorts, ExcludeOutboundPorts string
	// LogLevel is global.logging.level (--log_output_level); LogAsJSON adds --log_as_json.
	LogLevel  string
	LogAsJSON bool
	// CNI is pilot.cni.enabled: the init container is istio-validation, which only validates.
	CNI bool
	// ForceApplyIptables is global.proxy_init.forceApplyIptables (--force-apply, not with CNI).
	ForceApplyIptables bool
	// NativeNftables is global.nativeNftables (--native-nftables).
	NativeNftables bool
	// Privileged is global.proxy.privileged.
	Privileged bool
	// ProxyMetadata is meshConfig.defaultConfig.proxyMetadata: istio-init's environment (for
	// example ISTIO_DUAL_STACK=true).
	ProxyMetadata map[string]string
}

// DefaultMeshValues are the values of the pinned Istio's istio-discovery chart and meshConfig
// when nothing is set.
func DefaultMeshValues() MeshValues {
	return MeshValues{
		InterceptionMode:    istiopod.ModeRedirect,
		IncludeIPRanges:     "*",
		IncludeInboundPorts: "*",
		StatusPort:          15020,
		LogLevel:            "default:info",
	}
}

// Annotations the template reads while it renders istio-init.
const (
	annotationStatusPort          = "status.sidecar.istio.io/port"
	annotationAgentLogLevel       = "sidecar.istio.io/agentLogLevel"
	annotationRerouteInterfaces   = "istio.io/reroute-virtual-interfaces"
	annotationKubevirtInterfaces  = "traffic.sidecar.istio.io/kubevirtInterfaces"
	annotationExcludeInterfaces   = "traffic.sidecar.istio.io/excludeInterfaces"
	annotationInterceptionMode    = "sidecar.istio.io/interceptionMode"
	annotationIncludeOutboundIPs  = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	annotationExcludeOutboundIPs  = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	annotationIncludeInboundPorts = "traffic.sidecar.istio.io/includeInboundPorts"
	annotationExcludeInboundPorts = "traffic.sidecar.istio.io/excludeInboundPorts"
	annotationIncludeOutPorts     = "traffic.sidecar.istio.io/includeOutboundPorts"
	annotationExcludeOutPorts     = "traffic.sidecar.istio.io/excludeOutboundPorts"
)

// InjectedInit is the init container Istio's injector renders for a pod without annotations:
// see InjectedInitFor.
func InjectedInit(v MeshValues) Container {
	return InjectedInitFor(v, nil)
}

// InjectedInitFor renders istio-init (istio-validation with CNI) as the injection template does
// for a pod with these annotations at injection time: the image's entrypoint (pilot-agent) with
// `istio-iptables` and the flags as args, in the template's order and spelling, the conditional
// flags only where the template writes them, proxyMetadata as env, and its securityContext.
func InjectedInitFor(v MeshValues, annotations map[string]string) Container {
	ann := func(key, def string) string {
		if a, ok := annotations[key]; ok {
			return a
		}
		return def
	}
	isset := func(key string) bool { _, ok := annotations[key]; return ok }
	mode := ann(annotationInterceptionMode, v.InterceptionMode)
	tproxy := mode == istiopod.ModeTProxy
	uid, gid := orDefault(v.ProxyUID, 1337), orDefault(v.ProxyGID, 1337)
	u := strconv.FormatInt(uid, 10)
	if tproxy {
		u = "1337"
	}

	args := []string{"istio-iptables",
		"-p", strconv.Itoa(int(orDefault(int64(v.ProxyListenPort), 15001))),
		"-z", strconv.Itoa(int(orDefault(int64(v.ProxyInboundListenPort), 15006))),
		"-u", u,
		"-m", mode,
		"-i", ann(annotationIncludeOutboundIPs, v.IncludeIPRanges),
		"-x", ann(annotationExcludeOutboundIPs, v.ExcludeIPRanges),
		"-b", ann(annotationIncludeInboundPorts, v.IncludeInboundPorts),
		"-d",
	}
	statusPort := ann(annotationStatusPort, strconv.Itoa(v.StatusPort))
	if local := withStatusPort(statusPort, ann(annotationExcludeInboundPorts, v.ExcludeInboundPorts)); local != "" {
		args = append(args, "15090,15021,"+local)
	} else {
		args = append(args, "15090,15021")
	}
	if isset(annotationIncludeOutPorts) || v.IncludeOutboundPorts != "" {
		args = append(args, "-q", ann(annotationIncludeOutPorts, v.IncludeOutboundPorts))
	}
	if isset(annotationExcludeOutPorts) || v.ExcludeOutboundPorts != "" {
		args = append(args, "-o", ann(annotationExcludeOutPorts, v.ExcludeOutboundPorts))
	}
	switch {
	case isset(annotationRerouteInterfaces):
		args = append(args, "-k", annotations[annotationRerouteInterfaces])
	case isset(annotationKubevirtInterfaces):
		args = append(args, "-k", annotations[annotationKubevirtInterfaces])
	}
	if isset(annotationExcludeInterfaces) {
		args = append(args, "-c", annotations[annotationExcludeInterfaces])
	}
	args = append(args, "--log_output_level="+ann(annotationAgentLogLevel, v.LogLevel))
	if v.LogAsJSON {
		args = append(args, "--log_as_json")
	}
	switch {
	case v.CNI:
		args = append(args, "--run-validation", "--skip-rule-apply")
	case v.ForceApplyIptables:
		args = append(args, "--force-apply")
	}
	if v.NativeNftables {
		args = append(args, "--native-nftables")
	}

	c := Container{
		Name:       istiopod.ContainerIstioInit,
		Args:       args,
		Env:        maps.Clone(v.ProxyMetadata),
		Privileged: v.Privileged,
		CapAdd:     []string{"NET_ADMIN", "NET_RAW"},
		CapDrop:    []string{"ALL"},
		RunAsUser:  Int64(0), RunAsGroup: Int64(0),
	}
	if v.CNI {
		c.Name, c.CapAdd, c.ReadOnlyRootfs = istiopod.ContainerIstioValidation, nil, true
		if tproxy {
			uid, gid = 1337, 1337
		}
		c.RunAsUser, c.RunAsGroup = Int64(uid), Int64(gid)
	}
	return c
}

// InjectedProxy is the stand-in istio-proxy (see IstioProxy) with the user the template gives
// istio-proxy: the injector's proxy UID and GID, or root with group 1337 in TPROXY mode.
func InjectedProxy(v MeshValues) Container {
	c := IstioProxy()
	if v.InterceptionMode == istiopod.ModeTProxy {
		c.RunAsUser, c.RunAsGroup = Int64(0), Int64(1337)
		return c
	}
	c.RunAsUser, c.RunAsGroup = Int64(orDefault(v.ProxyUID, 1337)), Int64(orDefault(v.ProxyGID, 1337))
	return c
}

// InjectedPodWith is a sidecar-injected pod as the injector renders it with these mesh values:
// its init container, the stand-in proxy, an app.
func InjectedPodWith(namespace, name string, v MeshValues) Pod {
	init := InjectedInit(v)
	return Pod{
		Namespace: namespace, Name: name,
		Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: SidecarStatus(init.Name)},
		InitContainers: []Container{init},
		Containers:     []Container{InjectedProxy(v), App()},
	}
}

// withStatusPort is the template's excludeInboundPort: the excluded inbound ports with the
// status port appended unless it is already among them or is 0.
func withStatusPort(port, excluded string) string {
	port = strings.TrimSpace(port)
	if port == "" || port == "0" {
		return excluded
	}
	var out []string
	for _, p := range strings.Split(excluded, ",") {
		if p == port {
			return excluded
		}
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(append(out, port), ",")
}

func orDefault(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// sortedEnv is a container's environment in the order the template renders proxyMetadata
// (by name), so that the runtime's spec is the same from run to run.
func sortedEnv(env map[string]string) []string {
	return slices.Sorted(maps.Keys(env))
}
