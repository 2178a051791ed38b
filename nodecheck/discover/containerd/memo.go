package containerd

import (
	"context"
	"maps"
	"slices"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
)

// memo keeps, from one discovery of a Runtime to the next, what cannot change while the object
// it describes lives, so that an agent re-listing a node of 110 steady pods every few seconds
// does not parse 330 OCI specs, send 330 ContainerStatus and 110 task requests and read 110
// /proc/PID/cgroup files each time (issue 15's profile: discovery was a quarter of the agent's
// CPU). What it keeps, and why each is safe:
//   - a container's parsed record (spec, CRI extension) while containerd's UpdatedAt is the same:
//     a container's spec and extensions only change through an Update, which moves UpdatedAt;
//   - a container's CRI status while the CRI listing gives the same state and it is running or
//     exited: CRI never moves a container back, and a running or exited container's status
//     (start, finish, exit code, reason) is fixed; created ones are asked every time;
//   - a sandbox's process ID and that process's pod cgroup: a sandbox keeps its process for life.
//
// Entries of objects the listing no longer shows are dropped at once: the memo is bounded by the
// node's containers. Every discovery still lists the node (containers, ready sandboxes, states),
// so a new, changed or removed pod is seen exactly as without it.
type memo struct {
	records   map[string]memoRecord
	sandboxes map[string]memoSandbox
	statuses  map[string]*runtimeapi.ContainerStatus
	pids      map[string]uint32
	cgroups   map[string]memoCgroup
}

type memoRecord struct {
	updated time.Time
	rec     record
}

type memoSandbox struct {
	updated time.Time
	s       discover.Sandbox // without Pid and Containers
}

type memoCgroup struct {
	pid    uint32
	cgroup string
}

func newMemo() *memo {
	return &memo{records: map[string]memoRecord{}, sandboxes: map[string]memoSandbox{},
		statuses: map[string]*runtimeapi.ContainerStatus{}, pids: map[string]uint32{}, cgroups: map[string]memoCgroup{}}
}

// record is recordOf(ctr), parsed again only when the container was updated.
func (m *memo) record(ctr *containersapi.Container) record {
	updated := ctr.GetUpdatedAt().AsTime()
	if e, ok := m.records[ctr.ID]; ok && e.updated.Equal(updated) {
		return cloneRecord(e.rec)
	}
	rec := recordOf(ctr)
	m.records[ctr.ID] = memoRecord{updated: updated, rec: cloneRecord(rec)}
	return rec
}

// sandbox is sandboxOf(ctr, pid), parsed again only when the sandbox container was updated.
func (m *memo) sandbox(ctr *containersapi.Container, pid uint32) *discover.Sandbox {
	updated := ctr.GetUpdatedAt().AsTime()
	e, ok := m.sandboxes[ctr.ID]
	if !ok || !e.updated.Equal(updated) {
		e = memoSandbox{updated: updated, s: *sandboxOf(ctr, 0)}
		m.sandboxes[ctr.ID] = e
	}
	s := e.s
	s.Problems = slices.Clone(e.s.Problems)
	s.Labels, s.Annotations = maps.Clone(e.s.Labels), maps.Clone(e.s.Annotations)
	s.Pid = pid
	return &s
}

// status is the kept CRI status of a container when the listing's state says it still holds.
func (m *memo) status(id string, listed map[string]runtimeapi.ContainerState) *runtimeapi.ContainerStatus {
	st := m.statuses[id]
	if st == nil || listed == nil {
		return nil
	}
	if state, ok := listed[id]; !ok || state != st.State {
		return nil
	}
	return st
}

// keepStatus keeps a status that cannot change any more.
func (m *memo) keepStatus(id string, st *runtimeapi.ContainerStatus) {
	if st.State == runtimeapi.ContainerState_CONTAINER_RUNNING || st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
		m.statuses[id] = st
	} else {
		delete(m.statuses, id)
	}
}

// forget drops what the listing no longer shows.
func (m *memo) forget(listed map[string]bool) {
	unlisted := func(id string) bool { return !listed[id] }
	maps.DeleteFunc(m.records, func(id string, _ memoRecord) bool { return unlisted(id) })
	maps.DeleteFunc(m.sandboxes, func(id string, _ memoSandbox) bool { return unlisted(id) })
	maps.DeleteFunc(m.statuses, func(id string, _ *runtimeapi.ContainerStatus) bool { return unlisted(id) })
	maps.DeleteFunc(m.pids, func(id string, _ uint32) bool { return unlisted(id) })
	maps.DeleteFunc(m.cgroups, func(id string, _ memoCgroup) bool { return unlisted(id) })
}

func cloneRecord(r record) record {
	r.c.Capabilities = slices.Clone(r.c.Capabilities)
	r.c.Args, r.c.Env = slices.Clone(r.c.Args), slices.Clone(r.c.Env)
	return r
}

// listedStates asks CRI for the state of every container in one request; nil when it cannot
// (then every status is asked for, as before).
func (r *Runtime) listedStates(ctx context.Context) map[string]runtimeapi.ContainerState {
	resp, err := r.cri.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil
	}
	out := make(map[string]runtimeapi.ContainerState, len(resp.Containers))
	for _, c := range resp.Containers {
		out[c.Id] = c.State
	}
	return out
}
