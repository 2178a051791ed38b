// Package cri discovers the node's pods through the Container Runtime Interface.
//
// The CRI (k8s.io/cri-api) is what kubelet itself speaks, so a node whose runtime is not
// containerd (CRI-O) is covered too: ListPodSandbox and ListContainers for the whole node, then
// one verbose PodSandboxStatus per ready sandbox (IP, annotations, and in the runtime's info the
// OCI spec with the netns path and the sandbox pid) and one verbose ContainerStatus per container
// (state, exit code, times, and the OCI spec with the effective capabilities), in parallel.
package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
)

// maxMessageSize is large enough for a verbose status with a big OCI spec.
const maxMessageSize = 16 << 20

// Runtime is discovery through one CRI endpoint.
type Runtime struct {
	endpoint string
	hostRoot string
	conn     *grpc.ClientConn
	rt       runtimeapi.RuntimeServiceClient
}

// New connects to a CRI endpoint: "unix:///run/crio/crio.sock" or a socket path. The connection
// is made lazily: a runtime that is down makes Discover fail, not New.
func New(endpoint, hostRoot string) (*Runtime, error) {
	target := endpoint
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize)))
	if err != nil {
		return nil, fmt.Errorf("connecting to CRI endpoint %s: %w", endpoint, err)
	}
	return NewWithClient(endpoint, hostRoot, runtimeapi.NewRuntimeServiceClient(conn), conn), nil
}

// NewWithClient uses an existing CRI client; conn, when not nil, is closed by Close.
func NewWithClient(endpoint, hostRoot string, rt runtimeapi.RuntimeServiceClient, conn *grpc.ClientConn) *Runtime {
	return &Runtime{endpoint: endpoint, hostRoot: hostRoot, conn: conn, rt: rt}
}

// Close closes the connection.
func (r *Runtime) Close() error {
	if r.conn == nil {
		return nil
	}
	return r.conn.Close()
}

// Discover lists every ready pod sandbox with its containers.
func (r *Runtime) Discover(ctx context.Context) ([]nodecheck.Target, error) {
	sbs, err := r.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, fmt.Errorf("listing pod sandboxes at CRI endpoint %s: %w", r.endpoint, err)
	}
	ctrs, err := r.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing containers at CRI endpoint %s: %w", r.endpoint, err)
	}
	sandboxes := make([]discover.Sandbox, len(sbs.Items))
	index := make(map[string]int, len(sbs.Items))
	for i, sb := range sbs.Items {
		index[sb.Id] = i
		sandboxes[i] = discover.Sandbox{ID: sb.Id, Labels: sb.Labels, Annotations: sb.Annotations}
		if m := sb.Metadata; m != nil {
			sandboxes[i].Namespace, sandboxes[i].Name, sandboxes[i].UID = m.Namespace, m.Name, m.Uid
		}
	}
	type job struct {
		sandbox int
		ctr     *runtimeapi.Container // nil: the sandbox's own status
	}
	var jobs []job
	for i := range sandboxes {
		jobs = append(jobs, job{sandbox: i})
	}
	for _, c := range ctrs.Containers {
		if i, ok := index[c.PodSandboxId]; ok {
			jobs = append(jobs, job{sandbox: i, ctr: c})
		}
	}
	containers := make([]*nodecheck.Container, len(jobs))
	problems := make([]string, len(jobs))
	var mu sync.Mutex // sandboxes[i] fields set by sandbox jobs
	var g errgroup.Group
	g.SetLimit(discover.Parallel)
	for j, jb := range jobs {
		g.Go(func() error {
			if jb.ctr == nil {
				mu.Lock()
				s := sandboxes[jb.sandbox]
				mu.Unlock()
				problems[j] = r.sandboxStatus(ctx, &s)
				mu.Lock()
				sandboxes[jb.sandbox] = s
				mu.Unlock()
				return nil
			}
			c, problem := r.containerStatus(ctx, jb.ctr)
			containers[j], problems[j] = c, problem
			return nil
		})
	}
	_ = g.Wait()
	for j, jb := range jobs {
		s := &sandboxes[jb.sandbox]
		if containers[j] != nil {
			s.Containers = append(s.Containers, *containers[j])
		}
		if problems[j] != "" {
			s.Problems = append(s.Problems, problems[j])
		}
	}
	out := make([]nodecheck.Target, 0, len(sandboxes))
	cgroups := discover.NewCgroups(r.hostRoot)
	for _, s := range sandboxes {
		t := discover.Target(s, r.hostRoot)
		cgroups.Assign(&t, s.Pid)
		out = append(out, t)
	}
	discover.SortTargets(out)
	return out, nil
}

// verboseInfo is the part of a runtime's verbose "info" that discovery reads. containerd and
// CRI-O both put the OCI spec under "runtimeSpec" and the process under "pid".
type verboseInfo struct {
	Pid         uint32          `json:"pid"`
	RuntimeSpec json.RawMessage `json:"runtimeSpec"`
}

func parseInfo(info map[string]string) (verboseInfo, error) {
	var v verboseInfo
	raw, ok := info["info"]
	if !ok {
		return v, fmt.Errorf("no verbose info")
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return v, fmt.Errorf("reading verbose info: %w", err)
	}
	return v, nil
}

// sandboxStatus fills what PodSandboxStatus says and returns a problem, if any.
func (r *Runtime) sandboxStatus(ctx context.Context, s *discover.Sandbox) string {
	resp, err := r.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: s.ID, Verbose: true})
	if status.Code(err) == codes.NotFound {
		return "the pod's sandbox was removed during discovery"
	}
	if err != nil {
		return fmt.Sprintf("status of the pod's sandbox: %v", err)
	}
	st := resp.Status
	if st.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		return "the pod's sandbox stopped during discovery"
	}
	if st.Network != nil {
		s.IP = st.Network.Ip
		for _, ip := range st.Network.AdditionalIps {
			s.AdditionalIPs = append(s.AdditionalIPs, ip.GetIp())
		}
	}
	if st.Annotations != nil {
		s.Annotations = st.Annotations
	}
	if st.Labels != nil {
		s.Labels = st.Labels
	}
	if ns := st.GetLinux().GetNamespaces().GetOptions(); ns != nil && ns.Network == runtimeapi.NamespaceMode_NODE {
		s.HostNetwork = true
	}
	info, err := parseInfo(resp.Info)
	if err != nil {
		return fmt.Sprintf("sandbox %s: %v", s.ID, err)
	}
	s.Pid = info.Pid
	if len(info.RuntimeSpec) > 0 {
		spec, err := discover.ParseSpec(info.RuntimeSpec)
		if err != nil {
			return fmt.Sprintf("sandbox %s: %v", s.ID, err)
		}
		path, own := spec.NetworkNamespace()
		if !own {
			s.HostNetwork = true
		}
		s.NetnsPath = path
	}
	return ""
}

// containerStatus returns one container as ContainerStatus describes it.
func (r *Runtime) containerStatus(ctx context.Context, ctr *runtimeapi.Container) (*nodecheck.Container, string) {
	c := &nodecheck.Container{ID: ctr.Id, State: discover.State(ctr.State), UID: -1, GID: -1}
	if ctr.Metadata != nil {
		c.Name, c.Attempt = ctr.Metadata.Name, ctr.Metadata.Attempt
	}
	if ctr.Image != nil {
		c.Image = ctr.Image.Image
	}
	resp, err := r.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.Id, Verbose: true})
	if status.Code(err) == codes.NotFound {
		return nil, "" // removed since the listing: an old attempt kubelet collected
	}
	if err != nil {
		return c, fmt.Sprintf("status of container %s: %v", c.Name, err)
	}
	discover.ApplyStatus(c, resp.Status)
	if info, err := parseInfo(resp.Info); err == nil && len(info.RuntimeSpec) > 0 {
		if spec, err := discover.ParseSpec(info.RuntimeSpec); err == nil {
			spec.ApplyTo(c)
		}
	}
	return c, ""
}
