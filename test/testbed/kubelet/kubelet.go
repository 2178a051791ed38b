// Package kubelet drives a test bed containerd through CRI the way kubelet does, so meshdoctor's
// discovery meets real pod sandboxes exactly as a node has them: the labels and annotations kubelet
// sets, init containers run one after the other to completion, then the pod's containers, each
// with its securityContext. There is no API server and no image registry: images are built on the
// test machine and imported (test/testbed's BuildPauseImage, BuildIstioImage).
package kubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// Labels and annotations kubelet puts on sandboxes and containers (pkg/kubelet/types/labels.go,
// pkg/kubelet/kuberuntime/labels.go).
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"

	annotationRestartCount     = "io.kubernetes.container.restartCount"
	annotationTerminationPath  = "io.kubernetes.container.terminationMessagePath"
	annotationTerminationPoliy = "io.kubernetes.container.terminationMessagePolicy"
	annotationGracePeriod      = "io.kubernetes.pod.terminationGracePeriod"
	annotationConfigSource     = "kubernetes.io/config.source"
)

// initTimeout bounds how long RunPod waits for an init container to exit.
const initTimeout = 2 * time.Minute

// Node is a test bed node: a containerd with its CRI plugin, the images the test bed builds, and
// a CRI client.
type Node struct {
	Containerd *testbed.Containerd
	Runtime    runtimeapi.RuntimeServiceClient
	// CgroupParent is the cgroup every pod of this node lives under (removed at the end).
	CgroupParent string

	conn *grpc.ClientConn
	mu   sync.Mutex
	pods map[string]*RunningPod // by sandbox id
}

// Start starts a containerd (Debian's unless an option says otherwise), imports the sandbox and
// Istio images, and returns the node. Everything is removed when the test ends. It skips the
// test when not privileged or when pilot-agent is missing (fails instead in CI).
func Start(tb testing.TB, opts ...testbed.ContainerdOption) *Node {
	tb.Helper()
	testbed.RequirePrivileged(tb)
	pilotAgent := testbed.PilotAgent(tb)
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		tb.Fatal(err)
	}
	parent := "/md-pods-" + hex.EncodeToString(r[:])
	// Registered before the daemon's cleanup so that it runs after it: the pods' cgroups are
	// gone by then and their parents can be removed.
	tb.Cleanup(func() {
		if err := testbed.RemoveCgroupTree(parent); err != nil {
			tb.Errorf("kubelet: %v", err)
		}
	})
	c := testbed.StartContainerd(tb, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := tb.TempDir()
	pause, err := testbed.BuildPauseImage(ctx, dir)
	if err != nil {
		tb.Fatalf("kubelet: %v", err)
	}
	istio, err := testbed.BuildIstioImage(ctx, dir, pilotAgent)
	if err != nil {
		tb.Fatalf("kubelet: %v", err)
	}
	for _, archive := range []string{pause, istio} {
		if err := c.ImportImage(ctx, archive); err != nil {
			tb.Fatalf("kubelet: %v", err)
		}
	}
	n, err := Connect(c, parent)
	if err != nil {
		tb.Fatalf("kubelet: %v", err)
	}
	return n
}

// Connect makes a node of a running test bed containerd whose images are imported. Its pods are
// removed through CRI when the daemon is stopped.
func Connect(c *testbed.Containerd, cgroupParent string) (*Node, error) {
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to CRI at %s: %w", c.Address, err)
	}
	n := &Node{
		Containerd:   c,
		Runtime:      runtimeapi.NewRuntimeServiceClient(conn),
		CgroupParent: cgroupParent,
		conn:         conn,
		pods:         map[string]*RunningPod{},
	}
	c.BeforeStop(func(ctx context.Context) error {
		defer conn.Close()
		return n.RemoveAll(ctx)
	})
	return n, nil
}

// Pod is what a test asks for: the part of a Kubernetes pod spec kubelet turns into CRI calls.
type Pod struct {
	Namespace, Name string
	// UID defaults to a random one.
	UID         string
	Labels      map[string]string
	Annotations map[string]string
	HostNetwork bool
	// InitContainers run one after the other, each to its exit; a failing one stops the pod's
	// start there, as kubelet does (before restarting it with back-off, which tests do with
	// RestartInit).
	InitContainers []Container
	Containers     []Container
}

// Container is one container of a Pod.
type Container struct {
	Name string
	// Image defaults to testbed.IstioImage.
	Image      string
	Command    []string
	Args       []string
	Env        map[string]string
	RunAsUser  *int64
	RunAsGroup *int64
	// CapAdd and CapDrop are securityContext.capabilities (names without CAP_).
	CapAdd, CapDrop []string
	Privileged      bool
	// RestartAlways makes an init container a native sidecar: kubelet starts it and goes on to
	// the next one without waiting for it to exit.
	RestartAlways bool
	// ReadOnlyRootfs, SeccompRuntimeDefault and Mounts are securityContext.readOnlyRootFilesystem,
	// seccompProfile RuntimeDefault and the hostPath volumes as kubelet passes them to CRI.
	ReadOnlyRootfs        bool
	SeccompRuntimeDefault bool
	Mounts                []Mount
}

// Mount is a hostPath volume mounted into a container.
type Mount struct {
	HostPath, ContainerPath string
	ReadOnly                bool
	// Propagation is the volumeMount's mountPropagation, as CRI names it (kubelet maps
	// HostToContainer to PROPAGATION_HOST_TO_CONTAINER).
	Propagation runtimeapi.MountPropagation
}

// RunningPod is a pod the node runs.
type RunningPod struct {
	Pod
	SandboxID string
	// Netns is the sandbox's network namespace path ("" with host network).
	Netns string
	IP    string
	// ContainerIDs maps container name to the id of its latest attempt.
	ContainerIDs map[string]string
	// ExitCodes of the init containers that ran, by name.
	ExitCodes map[string]int32
	attempts  map[string]uint32
}

// Int64 is a helper for RunAsUser and RunAsGroup.
func Int64(v int64) *int64 { return &v }

// RunPod runs a pod sandbox and its containers. Init container failures are not errors: the
// returned pod says how they exited.
func (n *Node) RunPod(ctx context.Context, p Pod) (*RunningPod, error) {
	if p.UID == "" {
		var r [16]byte
		if _, err := rand.Read(r[:]); err != nil {
			return nil, err
		}
		h := hex.EncodeToString(r[:])
		p.UID = h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
	}
	cfg := n.sandboxConfig(p)
	if err := os.MkdirAll(cfg.LogDirectory, 0o755); err != nil {
		return nil, fmt.Errorf("creating pod log dir: %w", err)
	}
	resp, err := n.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox %s/%s: %w", p.Namespace, p.Name, err)
	}
	rp := &RunningPod{Pod: p, SandboxID: resp.PodSandboxId, ContainerIDs: map[string]string{},
		ExitCodes: map[string]int32{}, attempts: map[string]uint32{}}
	n.mu.Lock()
	n.pods[rp.SandboxID] = rp
	n.mu.Unlock()
	if err := n.fillNetwork(ctx, rp); err != nil {
		return rp, err
	}
	for _, c := range p.InitContainers {
		if c.RestartAlways {
			if _, err := n.startContainer(ctx, rp, cfg, c); err != nil {
				return rp, err
			}
			continue
		}
		code, err := n.runToExit(ctx, rp, cfg, c)
		if err != nil {
			return rp, err
		}
		if code != 0 {
			return rp, nil
		}
	}
	for _, c := range p.Containers {
		if _, err := n.startContainer(ctx, rp, cfg, c); err != nil {
			return rp, err
		}
	}
	return rp, nil
}

// RestartInit runs the named init container once more (the next attempt), as kubelet does after
// a failure, and returns its exit code.
func (n *Node) RestartInit(ctx context.Context, rp *RunningPod, name string) (int32, error) {
	for _, c := range rp.InitContainers {
		if c.Name == name {
			return n.runToExit(ctx, rp, n.sandboxConfig(rp.Pod), c)
		}
	}
	return 0, fmt.Errorf("pod %s/%s has no init container %s", rp.Namespace, rp.Name, name)
}

func (n *Node) sandboxConfig(p Pod) *runtimeapi.PodSandboxConfig {
	labels := map[string]string{LabelPodName: p.Name, LabelPodNamespace: p.Namespace, LabelPodUID: p.UID}
	for k, v := range p.Labels {
		labels[k] = v
	}
	annotations := map[string]string{annotationConfigSource: "api"}
	for k, v := range p.Annotations {
		annotations[k] = v
	}
	network, hostname := runtimeapi.NamespaceMode_POD, p.Name
	if p.HostNetwork {
		// A host-network pod shares the node's UTS namespace too: kubelet sets no hostname.
		network, hostname = runtimeapi.NamespaceMode_NODE, ""
	}
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
		Hostname:     hostname,
		LogDirectory: filepath.Join(n.Containerd.PodLogDir, p.Namespace+"_"+p.Name+"_"+p.UID),
		Labels:       labels,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: n.CgroupParent + "/pod" + p.UID,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: network, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}
}

// fillNetwork reads the sandbox's netns path (from the runtime spec in the verbose status) and IP.
func (n *Node) fillNetwork(ctx context.Context, rp *RunningPod) error {
	st, err := n.Runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: rp.SandboxID, Verbose: true})
	if err != nil {
		return fmt.Errorf("PodSandboxStatus %s: %w", rp.SandboxID, err)
	}
	if st.Status.GetNetwork() != nil {
		rp.IP = st.Status.Network.Ip
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		return fmt.Errorf("sandbox %s verbose info: %w", rp.SandboxID, err)
	}
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			rp.Netns = ns.Path
		}
	}
	return nil
}

func (n *Node) startContainer(ctx context.Context, rp *RunningPod, sandbox *runtimeapi.PodSandboxConfig, c Container) (string, error) {
	attempt, seen := rp.attempts[c.Name]
	if seen {
		attempt++
	}
	rp.attempts[c.Name] = attempt
	image := c.Image
	if image == "" {
		image = testbed.IstioImage
	}
	var envs []*runtimeapi.KeyValue
	for _, k := range sortedEnv(c.Env) {
		envs = append(envs, &runtimeapi.KeyValue{Key: k, Value: []byte(c.Env[k])})
	}
	sc := &runtimeapi.LinuxContainerSecurityContext{
		Privileged: c.Privileged,
		NamespaceOptions: &runtimeapi.NamespaceOption{
			Network: sandbox.Linux.SecurityContext.NamespaceOptions.Network,
			Pid:     runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
		},
	}
	if len(c.CapAdd) > 0 || len(c.CapDrop) > 0 {
		sc.Capabilities = &runtimeapi.Capability{AddCapabilities: c.CapAdd, DropCapabilities: c.CapDrop}
	}
	if c.RunAsUser != nil {
		sc.RunAsUser = &runtimeapi.Int64Value{Value: *c.RunAsUser}
	}
	if c.RunAsGroup != nil {
		sc.RunAsGroup = &runtimeapi.Int64Value{Value: *c.RunAsGroup}
	}
	sc.ReadonlyRootfs = c.ReadOnlyRootfs
	if c.SeccompRuntimeDefault {
		sc.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	}
	var mounts []*runtimeapi.Mount
	for _, m := range c.Mounts {
		mounts = append(mounts, &runtimeapi.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath,
			Readonly: m.ReadOnly, Propagation: m.Propagation})
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: c.Name, Attempt: attempt},
		Image:    &runtimeapi.ImageSpec{Image: image},
		Command:  c.Command,
		Args:     c.Args,
		Envs:     envs,
		Mounts:   mounts,
		Labels: map[string]string{
			LabelContainerName: c.Name, LabelPodName: rp.Name, LabelPodNamespace: rp.Namespace, LabelPodUID: rp.UID,
		},
		Annotations: map[string]string{
			annotationRestartCount:     strconv.Itoa(int(attempt)),
			annotationTerminationPath:  "/dev/termination-log",
			annotationTerminationPoliy: "File",
			annotationGracePeriod:      "30",
		},
		LogPath: filepath.Join(c.Name, strconv.Itoa(int(attempt))+".log"),
		Linux:   &runtimeapi.LinuxContainerConfig{SecurityContext: sc},
	}
	if err := os.MkdirAll(filepath.Join(sandbox.LogDirectory, c.Name), 0o755); err != nil {
		return "", fmt.Errorf("creating container log dir: %w", err)
	}
	created, err := n.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: rp.SandboxID, Config: cfg, SandboxConfig: sandbox,
	})
	if err != nil {
		return "", fmt.Errorf("CreateContainer %s in %s/%s: %w", c.Name, rp.Namespace, rp.Name, err)
	}
	id := created.ContainerId
	rp.ContainerIDs[c.Name] = id
	if _, err := n.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		return id, fmt.Errorf("StartContainer %s in %s/%s: %w", c.Name, rp.Namespace, rp.Name, err)
	}
	return id, nil
}

func (n *Node) runToExit(ctx context.Context, rp *RunningPod, sandbox *runtimeapi.PodSandboxConfig, c Container) (int32, error) {
	id, err := n.startContainer(ctx, rp, sandbox, c)
	if err != nil {
		return 0, err
	}
	st, err := n.WaitExit(ctx, id)
	if err != nil {
		return 0, err
	}
	rp.ExitCodes[c.Name] = st.ExitCode
	return st.ExitCode, nil
}

// RestartContainer kills the named container of a running pod and starts its next attempt, as
// kubelet does when a container crashes: the runtime sees the task exit, then a new task start.
// It returns the new attempt's container id.
func (n *Node) RestartContainer(ctx context.Context, rp *RunningPod, name string) (string, error) {
	for _, c := range rp.Containers {
		if c.Name != name {
			continue
		}
		if _, err := n.Runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: rp.ContainerIDs[name]}); err != nil {
			return "", fmt.Errorf("StopContainer %s in %s/%s: %w", name, rp.Namespace, rp.Name, err)
		}
		return n.startContainer(ctx, rp, n.sandboxConfig(rp.Pod), c)
	}
	return "", fmt.Errorf("pod %s/%s has no container %s", rp.Namespace, rp.Name, name)
}

// WaitExit polls a container until it has exited and returns its status.
func (n *Node) WaitExit(ctx context.Context, id string) (*runtimeapi.ContainerStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()
	for {
		resp, err := n.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return nil, fmt.Errorf("ContainerStatus %s: %w", id, err)
		}
		if resp.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return resp.Status, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("container %s (%s) did not exit: %w", id, resp.Status.GetMetadata().GetName(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Logs returns a container's log as the runtime wrote it (CRI log format).
func (n *Node) Logs(rp *RunningPod, name string) string {
	attempt := rp.attempts[name]
	data, err := os.ReadFile(filepath.Join(n.Containerd.PodLogDir, rp.Namespace+"_"+rp.Name+"_"+rp.UID, name, strconv.Itoa(int(attempt))+".log"))
	if err != nil {
		return err.Error()
	}
	return string(data)
}

// StopPod stops a pod's sandbox (its containers are killed, its netns removed) and keeps its
// records, as kubelet does before garbage collection.
func (n *Node) StopPod(ctx context.Context, rp *RunningPod) error {
	if _, err := n.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: rp.SandboxID}); err != nil {
		return fmt.Errorf("StopPodSandbox %s/%s: %w", rp.Namespace, rp.Name, err)
	}
	return nil
}

// RemovePod stops and removes a pod: sandbox, containers, netns, CNI lease.
func (n *Node) RemovePod(ctx context.Context, rp *RunningPod) error {
	if err := n.StopPod(ctx, rp); err != nil && !isNotFound(err) {
		return err
	}
	if _, err := n.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: rp.SandboxID}); err != nil && !isNotFound(err) {
		return fmt.Errorf("RemovePodSandbox %s/%s: %w", rp.Namespace, rp.Name, err)
	}
	n.mu.Lock()
	delete(n.pods, rp.SandboxID)
	n.mu.Unlock()
	return nil
}

// RemoveAll removes every sandbox the runtime has (not only the ones RunPod made).
func (n *Node) RemoveAll(ctx context.Context) error {
	resp, err := n.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("ListPodSandbox: %w", err)
	}
	// In parallel: a node of 110 pods takes minutes one by one.
	errs := make([]error, len(resp.Items))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, s := range resp.Items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = n.RemovePod(ctx, &RunningPod{SandboxID: s.Id, Pod: Pod{Namespace: s.Metadata.Namespace, Name: s.Metadata.Name}})
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	return err != nil && strings.Contains(err.Error(), "not found")
}
