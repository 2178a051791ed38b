// Package discover finds the node's pod sandboxes through its container runtime.
//
// Each sandbox becomes the nodecheck.Target the checks look at: identity, network namespace, IP,
// annotations, labels, and containers with their role, state, exit code, times and effective
// capabilities. Nothing comes from the API server, so a node can be diagnosed while it is down:
// the runtime keeps the pod's annotations as kubelet handed them over when it created the sandbox.
//
// # Runtimes
//
// The runtimes themselves are in the sub-packages: discover/containerd (containerd's gRPC API)
// and discover/cri (any CRI runtime, CRI-O included). This package holds what both share: the
// rules that give containers their role, decide whether a pod is meant to be captured, and find
// its network namespace under --host-root.
package discover

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// Runtime lists the pods of the node. Discover fails only when the runtime cannot be asked at all
// (socket down); what goes wrong with one pod is that pod's DiscoveryError.
type Runtime interface {
	Discover(ctx context.Context) ([]nodecheck.Target, error)
	Close() error
}

type freshKey struct{}

// Fresh marks ctx as asking for the runtime's listing as it is now: a Runtime that keeps an
// earlier listing (agent/runtimeevents.Listing) asks the runtime again for a Discover with it.
func Fresh(ctx context.Context) context.Context { return context.WithValue(ctx, freshKey{}, true) }

// WantsFresh reports whether ctx was marked with Fresh.
func WantsFresh(ctx context.Context) bool { v, _ := ctx.Value(freshKey{}).(bool); return v }

// Labels kubelet sets on sandboxes and containers.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
)

// Parallel bounds how many requests one discovery sends to the runtime at once: enough to keep
// a runtime busy on a 2-core node (status requests are answered from memory in ~0.3 ms).
const Parallel = 16

// Sandbox is what a runtime says of one pod sandbox, before Target applies the shared rules.
type Sandbox struct {
	ID                   string
	Namespace, Name, UID string
	// NetnsPath is the network namespace as the runtime reports it, in the host's view.
	NetnsPath string
	// Pid is the sandbox process (0 when unknown): /proc/PID/ns/net is the fallback netns.
	Pid uint32
	IP  string
	// AdditionalIPs are the pod's other IPs, as the runtime reports them (the other family's of a
	// dual-stack pod).
	AdditionalIPs []string
	Labels        map[string]string
	Annotations   map[string]string
	HostNetwork   bool
	// Containers are every container record of the sandbox, all attempts.
	Containers []nodecheck.Container
	// Problems are what could not be read about the pod.
	Problems []string
}

// Target applies the shared rules to a sandbox: the latest attempt of each container with its
// role, the capture expectation (a pod not meant to be captured is skipped), CNI mode and the
// proxy's user as typed facts, and the netns path under hostRoot.
func Target(s Sandbox, hostRoot string) nodecheck.Target {
	t := nodecheck.Target{
		Namespace:   s.Namespace,
		Name:        s.Name,
		UID:         s.UID,
		SandboxID:   s.ID,
		IP:          s.IP,
		IPs:         podIPs(s.IP, s.AdditionalIPs),
		HostNetwork: s.HostNetwork,
		Labels:      s.Labels,
		Annotations: s.Annotations,
		Containers:  LatestAttempts(s.Containers),
	}
	AssignRoles(t.Containers, t.Annotations)
	KeepIstioInitSpecs(t.Containers)
	t.CNIMode = t.Container(istiopod.ContainerIstioValidation) != nil && t.Container(istiopod.ContainerIstioInit) == nil
	if proxy := t.Container(istiopod.ContainerIstioProxy); proxy != nil && proxy.UID >= 0 {
		t.ProxyUser = &nodecheck.User{UID: proxy.UID, GID: proxy.GID}
	}
	problems := s.Problems
	if !t.HostNetwork {
		if s.NetnsPath == "" && s.Pid == 0 {
			problems = append(problems, "the runtime reports no network namespace for the sandbox")
		} else {
			t.Netns = NetnsPath(hostRoot, s.NetnsPath, s.Pid)
		}
	}
	if len(problems) > 0 {
		t.DiscoveryError = strings.Join(problems, "; ")
	}
	if mode, why := istiopod.Expect(t); mode == istiopod.ExpectNone {
		t.SkipReason = why
	} else if mode == istiopod.ExpectSidecar {
		t.StartingUp = startingUp(t)
	}
	return t
}

// startingUp says why a sidecar pod's rules cannot be there yet, or "": its istio-init has not
// exited on its first attempt, or is not created yet while no other container of the pod has
// started (a pod whose app runs went through its init containers, whatever the runtime still
// keeps of them). A restarted istio-init (attempt > 0) is a failure to judge, not a start.
func startingUp(t nodecheck.Target) string {
	if t.CNIMode {
		return "" // istio-cni wrote the rules before any container started
	}
	init := t.Container(istiopod.ContainerIstioInit)
	if init != nil {
		if (init.State == nodecheck.ContainerCreated || init.State == nodecheck.ContainerRunning) && init.Attempt == 0 {
			return fmt.Sprintf("the pod is starting: istio-init, which writes its capture rules, has not finished (%s)", init.State)
		}
		return ""
	}
	status, ok := istiopod.ParseSidecarStatus(t.Annotations)
	if !ok || !slices.Contains(status.InitContainers, istiopod.ContainerIstioInit) {
		return ""
	}
	for _, c := range t.Containers {
		if !c.StartedAt.IsZero() || c.State == nodecheck.ContainerRunning || c.State == nodecheck.ContainerExited {
			return ""
		}
	}
	return "the pod is starting: istio-init, which writes its capture rules, is not created yet"
}

// SortTargets orders targets by namespace and name, so reports are stable.
func SortTargets(ts []nodecheck.Target) {
	sort.SliceStable(ts, func(i, j int) bool {
		if ts[i].Namespace != ts[j].Namespace {
			return ts[i].Namespace < ts[j].Namespace
		}
		return ts[i].Name < ts[j].Name
	})
}

// NetnsPath is where the node's filesystem, seen under hostRoot, has the pod's network namespace:
// the path the runtime reports, else the sandbox process's /proc/PID/ns/net. When neither exists
// the reported path is returned anyway, and reading it says the namespace is gone.
func NetnsPath(hostRoot, reported string, pid uint32) string {
	if hostRoot == "" {
		hostRoot = "/"
	}
	var p string
	if reported != "" {
		p = filepath.Join(hostRoot, reported)
		if _, err := os.Stat(p); err == nil || pid == 0 {
			return p
		}
	}
	if pid > 0 {
		proc := filepath.Join(hostRoot, "proc", strconv.FormatUint(uint64(pid), 10), "ns", "net")
		if _, err := os.Stat(proc); err == nil || p == "" {
			return proc
		}
	}
	return p
}

// LatestAttempts keeps the newest attempt of each container name (kubelet keeps the previous
// one around for its logs), in creation order.
func LatestAttempts(all []nodecheck.Container) []nodecheck.Container {
	latest := map[string]int{}
	for i, c := range all {
		j, seen := latest[c.Name]
		if !seen || c.Attempt > all[j].Attempt ||
			(c.Attempt == all[j].Attempt && c.CreatedAt.After(all[j].CreatedAt)) {
			latest[c.Name] = i
		}
	}
	out := make([]nodecheck.Container, 0, len(latest))
	for _, i := range latest {
		out = append(out, all[i])
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// KeepIstioInitSpecs drops the argv and environment of every container but Istio's own init
// containers: only what istio-init and istio-validation were told is needed, and the others'
// environment may hold secrets that have no business in a report or in memory.
func KeepIstioInitSpecs(containers []nodecheck.Container) {
	for i := range containers {
		if n := containers[i].Name; n != istiopod.ContainerIstioInit && n != istiopod.ContainerIstioValidation {
			containers[i].Args, containers[i].Env = nil, nil
		}
	}
}

// AssignRoles gives each container its role. The runtime does not know which containers are
// init containers; Istio's injector says which it added in sidecar.istio.io/status, and its
// names are fixed: istio-init and istio-validation are init containers, istio-proxy is the
// sidecar (a native sidecar when the status lists it among the init containers). Other init
// containers of the pod cannot be told from app containers on the node and are called app.
func AssignRoles(containers []nodecheck.Container, annotations map[string]string) {
	status, _ := istiopod.ParseSidecarStatus(annotations)
	for i := range containers {
		c := &containers[i]
		switch {
		case c.Name == istiopod.ContainerIstioProxy:
			c.Role = nodecheck.RoleSidecar
		case c.Name == istiopod.ContainerIstioInit, c.Name == istiopod.ContainerIstioValidation,
			slices.Contains(status.InitContainers, c.Name):
			c.Role = nodecheck.RoleInit
		default:
			c.Role = nodecheck.RoleApp
		}
	}
}

// Cgroups finds pods' cgroup v2 directories for one discovery: it reads this process's cgroup2
// mounts once, then each sandbox process's /proc/PID/cgroup under hostRoot. Not safe for
// concurrent use.
type Cgroups struct {
	hostRoot string
	read     bool
	mounts   []cgroupbpf.Mount
	err      error
}

// NewCgroups returns a finder for one discovery.
func NewCgroups(hostRoot string) *Cgroups { return &Cgroups{hostRoot: hostRoot} }

// Assign sets the target's Cgroup from its sandbox process, or CgroupError with why it cannot.
// The pod's cgroup is the sandbox process's parent when kubelet's naming says so (a directory
// named after the pod's UID, cgroupfs "pod<uid>" or systemd "…-pod<uid_with_underscores>.slice"),
// else the sandbox process's own: programs effective there are the pod's and its ancestors'.
func (c *Cgroups) Assign(t *nodecheck.Target, pid uint32) {
	if pid == 0 {
		t.CgroupError = "the runtime reports no sandbox process"
		return
	}
	if !c.read {
		c.read = true
		c.mounts, c.err = cgroupbpf.SelfMounts()
	}
	if c.err != nil {
		t.CgroupError = c.err.Error()
		return
	}
	path, err := cgroupbpf.ProcessPath(c.hostRoot, pid)
	if err == nil {
		var dir string
		if dir, err = cgroupbpf.Resolve(c.mounts, path); err == nil {
			t.Cgroup = PodCgroup(dir, t.UID)
			return
		}
	}
	t.CgroupError = err.Error()
}

// PodCgroup returns the parent of the sandbox process's cgroup dir when that parent is named
// after the pod's UID (kubelet's pod-level cgroup), else dir itself.
func PodCgroup(dir, uid string) string {
	if uid == "" {
		return dir
	}
	parent := filepath.Dir(dir)
	base := filepath.Base(parent)
	if strings.Contains(base, "pod"+uid) || strings.Contains(base, "pod"+strings.ReplaceAll(uid, "-", "_")) {
		return parent
	}
	return dir
}

// ApplyCNIExclusions marks the targets of namespaces istio-cni excludes (its exclude_namespaces,
// read from source): an ambient pod that only its label enrols is skipped, since istio-cni does not
// enrol it by design; a sidecar pod in CNI mode keeps the reason, which is why its rules are missing.
func ApplyCNIExclusions(ts []nodecheck.Target, namespaces []string, source string) {
	for i := range ts {
		t := &ts[i]
		if t.SkipReason != "" || !slices.Contains(namespaces, t.Namespace) {
			continue
		}
		why := fmt.Sprintf("istio-cni excludes namespace %s (exclude_namespaces in %s)", t.Namespace, source)
		switch {
		case t.CNIMode:
			t.CNIExcluded = why
		case istiopod.AmbientEnrolled(*t) && !istiopod.Injected(*t) && t.Annotations[istiopod.AnnotationAmbientRedirection] != "enabled":
			t.SkipReason = "labelled for ambient, not enrolled: " + why + ", so it does not enrol its pods"
		}
	}
}

// ApplyMultusAttachment marks the CNI-mode pods of a node whose runtime networks pods through
// multus (source is its config) when their k8s.v1.cni.cncf.io/networks annotation does not attach
// istio-cni: multus never runs istio-cni for them. attaches says whether an annotation's value
// attaches it.
func ApplyMultusAttachment(ts []nodecheck.Target, source string, attaches func(annotation string) (bool, error)) {
	for i := range ts {
		t := &ts[i]
		if t.SkipReason != "" || !t.CNIMode {
			continue
		}
		v := t.Annotations[AnnotationMultusNetworks]
		ok, err := attaches(v)
		switch {
		case err != nil:
			t.CNINotInChain = fmt.Sprintf("the node networks pods through multus (%s), and the pod's %s annotation %q does not parse (%v)", source, AnnotationMultusNetworks, v, err)
		case !ok && v == "":
			t.CNINotInChain = fmt.Sprintf("the node networks pods through multus (%s), and the pod has no %s annotation: istio-cni's network is not attached", source, AnnotationMultusNetworks)
		case !ok:
			t.CNINotInChain = fmt.Sprintf("the node networks pods through multus (%s), and the pod's %s annotation %q does not name istio-cni's network", source, AnnotationMultusNetworks, v)
		}
	}
}

// AnnotationMultusNetworks is the annotation multus reads a pod's extra networks from; Istio's
// injector appends default/istio-cni to it in multus provider mode.
const AnnotationMultusNetworks = "k8s.v1.cni.cncf.io/networks"

// podIPs lists the runtime's IPs of a pod, the primary first, without empty ones.
func podIPs(primary string, additional []string) []string {
	var out []string
	for _, ip := range append([]string{primary}, additional...) {
		if ip = strings.TrimSpace(ip); ip != "" {
			out = append(out, ip)
		}
	}
	return out
}
