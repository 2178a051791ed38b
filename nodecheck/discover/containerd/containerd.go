// Package containerd discovers the node's pods through containerd's gRPC API.
//
// It lists every CRI pod sandbox (containers labelled io.cri-containerd.kind=sandbox in the
// k8s.io namespace) with its sandbox metadata extension (io.cri-containerd.sandbox.metadata:
// netns path, IP, the pod's annotations and labels), its containers with their OCI spec
// (effective capabilities), and the running tasks. A few list requests cover the whole node; what
// cannot have changed since the previous discovery (parsed specs, statuses of running and exited
// containers, sandbox processes and cgroups) is kept between discoveries (memo.go).
//
// # Exited containers
//
// One thing containerd's own API cannot say: how a container that has exited ended. The CRI
// plugin deletes a container's task as soon as it exits and keeps the exit code, reason and
// times in its own store, which it serves over CRI on the same socket. So the state of each
// container comes from a CRI ContainerStatus on the same connection (falling back to the task
// list if CRI does not answer), which is also what kubelet sees.
//
// # Versions
//
// Works with containerd 1.6, 1.7 and 2.x daemons: they serve the same v1 gRPC services, and the
// CRI plugin has kept its extension formats ("Version": "v1") since 1.x.
//
// # Why not containerd's Go client
//
// The services are called with the generated clients of containerd's API module
// (github.com/containerd/containerd/api) rather than through containerd's Go client
// (github.com/containerd/containerd/v2/client): discovery makes three list calls and the agent
// one event subscription, and the Go client links 146 more packages (image distribution,
// snapshotters, OpenTelemetry) whose init functions and code took 3.3 MB of an idle agent's
// 29 MB resident memory.
package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
)

// Namespace is the containerd namespace the CRI plugin keeps Kubernetes' containers in.
const Namespace = "k8s.io"

// What the CRI plugin puts on its containers.
const (
	labelKind                = "io.cri-containerd.kind"
	kindSandbox              = "sandbox"
	kindContainer            = "container"
	sandboxMetadataExtension = "io.cri-containerd.sandbox.metadata"
	containerMetadataExt     = "io.cri-containerd.container.metadata"
	specAnnotationSandboxID  = "io.kubernetes.cri.sandbox-id"
)

// DefaultAddress is containerd's socket on a node.
const DefaultAddress = "/run/containerd/containerd.sock"

// Runtime is discovery through one containerd daemon.
type Runtime struct {
	address    string
	hostRoot   string
	conn       *grpc.ClientConn
	containers containersapi.ContainersClient
	tasks      tasksapi.TasksClient
	cri        runtimeapi.RuntimeServiceClient
	// mu serialises discoveries: they share memo.
	mu   sync.Mutex
	memo *memo
}

// New connects to the containerd at address (a socket path). hostRoot is where the node's
// filesystem is seen ("/" on the node itself). The connection is made lazily: a daemon that is
// down makes Discover fail, not New.
func New(address, hostRoot string) (*Runtime, error) {
	conn, err := Dial(address)
	if err != nil {
		return nil, err
	}
	return &Runtime{address: address, hostRoot: hostRoot, conn: conn,
		containers: containersapi.NewContainersClient(conn),
		tasks:      tasksapi.NewTasksClient(conn),
		cri:        runtimeapi.NewRuntimeServiceClient(conn),
		memo:       newMemo(),
	}, nil
}

// Close closes the connection.
func (r *Runtime) Close() error { return r.conn.Close() }

// record is one CRI container of containerd with what its extension says.
type record struct {
	c         nodecheck.Container
	sandboxID string
}

// Discover lists every ready pod sandbox of the node with its containers. What cannot have
// changed since the previous discovery is taken from it (memo.go); calls are serialised.
func (r *Runtime) Discover(ctx context.Context) ([]nodecheck.Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// containerd's dialer waits for a missing socket to appear until its timeout; say at once
	// that nothing listens there.
	if _, err := os.Stat(r.address); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no containerd socket at %s (is containerd running, and is this its --containerd-address?): %w", r.address, err)
	}
	// The container records, which sandboxes are ready and the containers' states, at the same
	// time.
	var ready map[string]bool
	var readyErr error
	var states map[string]runtimeapi.ContainerState
	listed := make(chan struct{})
	go func() {
		defer close(listed)
		if ready, readyErr = r.readySandboxes(ctx); readyErr == nil {
			states = r.listedStates(ctx)
		}
	}()
	all, err := r.listContainers(ctx, `labels."`+labelKind+`"`)
	<-listed
	if err != nil {
		return nil, fmt.Errorf("listing containers of containerd at %s (namespace %s): %w", r.address, Namespace, err)
	}
	// Without CRI, containerd's task list says which sandboxes run. It is the slow way: the
	// daemon asks every shim for the state of every task (~1 ms each on a busy node).
	var procs map[string]*tasktypes.Process
	if readyErr != nil {
		tasks, err := r.tasks.List(ctx, &tasksapi.ListTasksRequest{})
		if err != nil {
			return nil, fmt.Errorf("listing tasks of containerd at %s (CRI: %v): %w", r.address, readyErr, err)
		}
		procs = make(map[string]*tasktypes.Process, len(tasks.Tasks))
		ready = map[string]bool{}
		for _, p := range tasks.Tasks {
			procs[p.ID] = p
			ready[p.ID] = p.Status == tasktypes.Status_RUNNING
		}
	}

	var sandboxes []*discover.Sandbox
	bySandbox := map[string]*discover.Sandbox{}
	var recs []record
	seen := make(map[string]bool, len(all))
	for _, ctr := range all {
		seen[ctr.ID] = true
		switch ctr.Labels[labelKind] {
		case kindSandbox:
			if !ready[ctr.ID] {
				continue // not ready: a stopped sandbox kubelet has not removed yet
			}
			pid := r.memo.pids[ctr.ID]
			if p := procs[ctr.ID]; p != nil {
				pid = p.Pid
			}
			s := r.memo.sandbox(ctr, pid)
			sandboxes = append(sandboxes, s)
			bySandbox[s.ID] = s
		case kindContainer:
			recs = append(recs, r.memo.record(ctr))
		}
	}
	// Only the containers of ready sandboxes are worth a status request.
	var mine []int
	for i, rec := range recs {
		if bySandbox[rec.sandboxID] != nil {
			mine = append(mine, i)
		}
	}
	pidsDone := make(chan struct{})
	go func() {
		defer close(pidsDone)
		r.fillSandboxPids(ctx, sandboxes)
	}()
	problems := r.fillStates(ctx, recs, mine, procs, states, readyErr == nil)
	<-pidsDone
	for _, s := range sandboxes {
		if s.Pid != 0 {
			r.memo.pids[s.ID] = s.Pid
		}
	}
	for _, i := range mine {
		s := bySandbox[recs[i].sandboxID]
		switch p := problems[i]; p {
		case removed:
			continue
		case "":
		default:
			s.Problems = append(s.Problems, p)
		}
		s.Containers = append(s.Containers, recs[i].c)
	}
	out := make([]nodecheck.Target, 0, len(sandboxes))
	cgroups := discover.NewCgroups(r.hostRoot)
	for _, s := range sandboxes {
		t := discover.Target(*s, r.hostRoot)
		if c, ok := r.memo.cgroups[s.ID]; ok && s.Pid != 0 && c.pid == s.Pid {
			t.Cgroup = c.cgroup
		} else if cgroups.Assign(&t, s.Pid); t.CgroupError == "" && t.Cgroup != "" {
			r.memo.cgroups[s.ID] = memoCgroup{pid: s.Pid, cgroup: t.Cgroup}
		}
		out = append(out, t)
	}
	r.memo.forget(seen)
	discover.SortTargets(out)
	return out, nil
}

// listContainers lists the containers that filter selects. It streams them as containerd's
// client does (a single List answer is bounded by the message size) and falls back to List on a
// daemon that cannot stream.
func (r *Runtime) listContainers(ctx context.Context, filter string) ([]*containersapi.Container, error) {
	req := &containersapi.ListContainersRequest{Filters: []string{filter}}
	var all []*containersapi.Container
	stream, err := r.containers.ListStream(ctx, req)
	for err == nil {
		var m *containersapi.ListContainerMessage
		if m, err = stream.Recv(); err == nil {
			all = append(all, m.GetContainer())
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		return all, nil
	case status.Code(err) == codes.Unimplemented:
		resp, err := r.containers.List(ctx, req)
		return resp.GetContainers(), err
	}
	return nil, err
}

// readySandboxes asks CRI which sandboxes are ready: one cheap request, answered from the CRI
// plugin's memory.
func (r *Runtime) readySandboxes(ctx context.Context) (map[string]bool, error) {
	if r.cri == nil {
		return nil, errors.New("no CRI client")
	}
	resp, err := r.cri.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, err
	}
	ready := make(map[string]bool, len(resp.Items))
	for _, s := range resp.Items {
		ready[s.Id] = true
	}
	return ready, nil
}

// sandboxMetadata is the CRI plugin's sandbox metadata extension.
type sandboxMetadata struct {
	Version  string
	Metadata struct {
		ID            string
		Config        discover.Metadata
		NetNSPath     string
		IP            string
		AdditionalIPs []string
	}
}

// containerMetadata is the CRI plugin's container metadata extension.
type containerMetadata struct {
	Version  string
	Metadata struct {
		ID        string
		SandboxID string
		Config    discover.Metadata
	}
}

func sandboxOf(ctr *containersapi.Container, pid uint32) *discover.Sandbox {
	s := &discover.Sandbox{
		ID:        ctr.ID,
		Namespace: ctr.Labels[discover.LabelPodNamespace],
		Name:      ctr.Labels[discover.LabelPodName],
		UID:       ctr.Labels[discover.LabelPodUID],
		Pid:       pid,
	}
	var meta sandboxMetadata
	if err := decodeExtension(ctr, sandboxMetadataExtension, &meta); err != nil {
		s.Problems = append(s.Problems, err.Error())
	} else {
		cfg := meta.Metadata.Config
		s.NetnsPath, s.IP, s.AdditionalIPs = meta.Metadata.NetNSPath, meta.Metadata.IP, meta.Metadata.AdditionalIPs
		s.Labels, s.Annotations = cfg.Labels, cfg.Annotations
		s.HostNetwork = cfg.Linux.SecurityContext.NamespaceOptions.Network == discover.NamespaceModeNode
		if cfg.Metadata.Name != "" {
			s.Namespace, s.Name, s.UID = cfg.Metadata.Namespace, cfg.Metadata.Name, cfg.Metadata.UID
		}
	}
	if ctr.Spec != nil {
		if spec, err := discover.ParseSpec(ctr.Spec.GetValue()); err == nil {
			if path, own := spec.NetworkNamespace(); !own {
				s.HostNetwork = true
			} else if s.NetnsPath == "" {
				s.NetnsPath = path
			}
		}
	}
	return s
}

func recordOf(ctr *containersapi.Container) record {
	rec := record{c: nodecheck.Container{
		ID:    ctr.ID,
		Name:  ctr.Labels[discover.LabelContainerName],
		Image: ctr.Image,
		State: nodecheck.ContainerUnknown,
		UID:   -1, GID: -1,
	}}
	var meta containerMetadata
	if err := decodeExtension(ctr, containerMetadataExt, &meta); err == nil {
		rec.sandboxID = meta.Metadata.SandboxID
		if n := meta.Metadata.Config.Metadata.Name; n != "" {
			rec.c.Name = n
		}
		rec.c.Attempt = meta.Metadata.Config.Metadata.Attempt
		if img := meta.Metadata.Config.Image.Image; img != "" {
			rec.c.Image = img
		}
	}
	if ctr.Spec != nil {
		if spec, err := discover.ParseSpec(ctr.Spec.GetValue()); err == nil {
			spec.ApplyTo(&rec.c)
		}
		if rec.sandboxID == "" {
			var a struct {
				Annotations map[string]string `json:"annotations"`
			}
			if json.Unmarshal(ctr.Spec.GetValue(), &a) == nil {
				rec.sandboxID = a.Annotations[specAnnotationSandboxID]
			}
		}
	}
	rec.c.CreatedAt = ctr.GetCreatedAt().AsTime().UTC()
	return rec
}

// decodeExtension reads one of the CRI plugin's JSON extensions ({"Version":"v1","Metadata":…}).
func decodeExtension(ctr *containersapi.Container, name string, v any) error {
	ext, ok := ctr.Extensions[name]
	if !ok || ext == nil {
		return fmt.Errorf("container %s has no %s extension", ctr.ID, name)
	}
	if err := json.Unmarshal(ext.GetValue(), v); err != nil {
		return fmt.Errorf("reading %s of %s (%s): %w", name, ctr.ID, ext.GetTypeUrl(), err)
	}
	return nil
}

// removed marks a container that no longer exists.
const removed = "\x00removed"

// fillStates asks CRI for the status of the chosen records, in parallel, falling back to the
// task list when CRI cannot answer. It returns, by record index, what went wrong.
// A status the memo holds for the state CRI's listing gives is not asked for again.
func (r *Runtime) fillStates(ctx context.Context, recs []record, which []int, procs map[string]*tasktypes.Process,
	states map[string]runtimeapi.ContainerState, useCRI bool) map[int]string {
	problems := map[int]string{}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(discover.Parallel)
	for _, i := range which {
		g.Go(func() error {
			c := &recs[i].c
			if useCRI {
				mu.Lock()
				kept := r.memo.status(c.ID, states)
				mu.Unlock()
				if kept != nil {
					discover.ApplyStatus(c, kept)
					return nil
				}
				resp, err := r.cri.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ID})
				if err == nil && resp.Status != nil {
					discover.ApplyStatus(c, resp.Status)
					mu.Lock()
					r.memo.keepStatus(c.ID, resp.Status)
					mu.Unlock()
					return nil
				}
				if status.Code(err) == codes.NotFound {
					// Removed since the listing: an old attempt kubelet collected, or the
					// whole pod (then its netns is gone too, and the check says so).
					mu.Lock()
					problems[i] = removed
					mu.Unlock()
					return nil
				}
				if err != nil && !errors.Is(ctx.Err(), context.Canceled) && status.Code(err) != codes.Unimplemented {
					mu.Lock()
					problems[i] = fmt.Sprintf("status of container %s (%s): %v", c.Name, shortID(c.ID), err)
					mu.Unlock()
				}
			}
			taskState(c, procs[c.ID])
			return nil
		})
	}
	_ = g.Wait()
	return problems
}

// fillSandboxPids asks containerd for the process of each sandbox whose pid the task list did
// not give (CRI said which are ready): the pod's cgroup is found from it. One Get per sandbox,
// in parallel; a sandbox whose task cannot be read keeps pid 0 and its cgroup is unknown, which
// is no problem of the pod's.
func (r *Runtime) fillSandboxPids(ctx context.Context, sandboxes []*discover.Sandbox) {
	var g errgroup.Group
	g.SetLimit(discover.Parallel)
	for _, s := range sandboxes {
		if s.Pid != 0 {
			continue
		}
		g.Go(func() error {
			if resp, err := r.tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: s.ID}); err == nil && resp.Process != nil {
				s.Pid = resp.Process.Pid
			}
			return nil
		})
	}
	_ = g.Wait()
}

// taskState is the state containerd's task list gives: enough for running containers.
func taskState(c *nodecheck.Container, p *tasktypes.Process) {
	if p == nil {
		return
	}
	switch p.Status {
	case tasktypes.Status_CREATED:
		c.State = nodecheck.ContainerCreated
	case tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
		c.State = nodecheck.ContainerRunning
	case tasktypes.Status_STOPPED:
		c.State = nodecheck.ContainerExited
		c.ExitCode = int32(p.ExitStatus)
		if p.ExitedAt != nil {
			c.FinishedAt = p.ExitedAt.AsTime()
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
