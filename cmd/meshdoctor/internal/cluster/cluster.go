// Package cluster gathers every node's meshdoctor report through the API server: it finds the
// agent pods, fetches each one's /debug/report through the API server's pod proxy (pods/proxy)
// with the caller's own credentials and RBAC, on a bounded pool with a per-node timeout, and
// streams one result per node, nodes without an agent or whose agent does not answer included. It
// also reads, page by page, the cluster state the cluster-level root causes need (package
// rootcause).
//
// Why pods/proxy reaches a listener of its own on the agent (its --report-address): the API
// server deletes the caller's Authorization header before proxying and presents no client
// certificate, so the agent cannot authenticate a proxied request, and the proxy refuses loopback
// pod IPs, where the token-free debug endpoint listens. The agent serves the report alone there
// (no raw rules), and the API server's RBAC on pods/proxy in the agent's namespace decides who
// reads it.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Defaults of the agents' DaemonSet (deploy/): where the agents run, how they are labelled, and
// the port of their --report-address, which their container also declares as PortName.
const (
	DefaultNamespace = "meshdoctor"
	DefaultSelector  = "app.kubernetes.io/name=meshdoctor"
	DefaultPort      = 9811
	PortName         = "report"
	ReportPath       = "/debug/report"
	DefaultParallel  = 32
	DefaultTimeout   = 10 * time.Second
	// MaxReportBytes bounds one node's report: a node of a few hundred pods serves well under a
	// megabyte, and a larger answer is not a report.
	MaxReportBytes = 32 << 20
	// pageSize is how many objects one list request returns.
	pageSize = 500
)

// Status says whether a node's report was read.
type Status string

// Node statuses.
const (
	StatusReported Status = "reported"
	// StatusNoAgent: no agent pod is scheduled on the node.
	StatusNoAgent Status = "no-agent"
	// StatusAgentNotRunning: the node's agent pod is not running or has no IP yet.
	StatusAgentNotRunning Status = "agent-not-running"
	// StatusNotAnswering: the agent runs but its report could not be read (no answer, an error,
	// not a report, or the caller may not use pods/proxy).
	StatusNotAnswering Status = "not-answering"
)

// NodeResult is one node's part of the cluster view.
type NodeResult struct {
	Node   string `json:"node"`
	Status Status `json:"status"`
	// Agent is the agent pod, "namespace/name".
	Agent string `json:"agent,omitempty"`
	// Error says why there is no report.
	Error  string            `json:"error,omitempty"`
	Report *nodecheck.Report `json:"report,omitempty"`
	// Forbidden is set when the API server refused the caller pods/proxy on the agent.
	Forbidden bool `json:"-"`
}

// Options say where the agents are and how to fetch their reports.
type Options struct {
	Namespace string
	Selector  string
	// Port of the agents' report listener; 0: the agent container's port named PortName, else
	// DefaultPort.
	Port     int
	Parallel int
	Timeout  time.Duration
}

// API is what the cluster view reads of the API server, as the caller (kubeapi.Client has it). A
// namespace of "" means every namespace.
type API interface {
	ListNamespacedPods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error)
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	// ProxyGetPod GETs path from a pod's port through the API server's pod proxy.
	ProxyGetPod(ctx context.Context, namespace, pod string, port int, path string) (io.ReadCloser, error)
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	ListNamespaces(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error)
	ListEvents(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.EventList, error)
	ListDeployments(ctx context.Context, namespace string, opts metav1.ListOptions) (*appsv1.DeploymentList, error)
	ListEndpointSlices(ctx context.Context, namespace string, opts metav1.ListOptions) (*discoveryv1.EndpointSliceList, error)
}

// Gatherer reads the cluster with the caller's client.
type Gatherer struct {
	Client  API
	Options Options
	// Enrich, when set, is called on each fetched report before it is emitted, from the worker
	// that fetched it: the cluster-level analysis of its pods against their API objects. It
	// records its own failures; a report is never lost to them.
	Enrich func(ctx context.Context, rep *nodecheck.Report)
}

// agentPod is what the gatherer keeps of an agent pod.
type agentPod struct {
	namespace, name string
	ip              string
	port            int
	running         bool
	phase           corev1.PodPhase
	created         time.Time
}

// Sink receives the gathering as it goes. Node is called from one goroutine at a time.
type Sink interface {
	// Planned says how many nodes will be reported, once the agents and nodes are listed.
	Planned(nodes int)
	Node(NodeResult)
}

// Outcome is what the gathering learnt beside the nodes' results.
type Outcome struct {
	// Notes say what could not be read and what that leaves out.
	Notes []string
	// Agents is how many nodes have an agent pod.
	Agents int
	// Forbidden counts nodes whose report the caller may not read (pods/proxy).
	Forbidden int
}

// ErrNoAgents means no agent pod matched: the DaemonSet is not installed, or the flags point
// elsewhere.
var ErrNoAgents = errors.New("no agent pods found")

// Gather lists the nodes and agent pods, then fetches every agent's report on a pool of
// Options.Parallel workers and hands each node's result to sink as it comes; nodes without an
// agent come first, in name order, fetched nodes in the order they answer. Only the node and agent
// lists are kept (a few hundred bytes per node); each report is released once the sink has it.
func (g *Gatherer) Gather(ctx context.Context, sink Sink) (Outcome, error) {
	var out Outcome
	o := g.Options
	agents, err := g.agents(ctx)
	if err != nil {
		return out, err
	}
	nodes, err := listNodeNames(ctx, g.Client)
	if err != nil {
		if !apierrors.IsForbidden(err) {
			return out, err
		}
		out.Notes = append(out.Notes, fmt.Sprintf("nodes not listed (%v): nodes without an agent pod are not shown", err))
	}
	if len(agents) == 0 {
		return out, fmt.Errorf("%w with selector %q in namespace %s (is the meshdoctor DaemonSet installed? see --namespace, --selector)",
			ErrNoAgents, o.Selector, o.Namespace)
	}
	out.Agents = len(agents)
	var missing []string
	for _, n := range nodes {
		if _, ok := agents[n]; !ok {
			missing = append(missing, n)
		}
	}
	sink.Planned(len(agents) + len(missing))
	for _, n := range missing {
		sink.Node(NodeResult{Node: n, Status: StatusNoAgent,
			Error: fmt.Sprintf("no pod matching %s in namespace %s runs on this node", o.Selector, o.Namespace)})
	}

	jobs := make(chan string)
	results := make(chan NodeResult)
	var wg sync.WaitGroup
	for range max(o.Parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for node := range jobs {
				r := g.fetch(ctx, node, agents[node])
				select {
				case results <- r:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for _, node := range slices.Sorted(maps.Keys(agents)) {
			select {
			case jobs <- node:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()
	for r := range results {
		if r.Forbidden {
			out.Forbidden++
		}
		sink.Node(r)
	}
	if err := ctx.Err(); err != nil {
		return out, fmt.Errorf("gathering the nodes' reports: %w", err)
	}
	return out, nil
}

// agents lists the agent pods by node; with two on a node (a rollout), the running, newest one.
func (g *Gatherer) agents(ctx context.Context) (map[string]agentPod, error) {
	o := g.Options
	out := map[string]agentPod{}
	err := eachPage(ctx, metav1.ListOptions{LabelSelector: o.Selector},
		func(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
			return g.Client.ListNamespacedPods(ctx, o.Namespace, opts)
		},
		func(l *corev1.PodList) string { return l.Continue },
		func(l *corev1.PodList) {
			for i := range l.Items {
				p := &l.Items[i]
				if p.Spec.NodeName == "" || p.DeletionTimestamp != nil && out[p.Spec.NodeName].name != "" {
					continue
				}
				a := agentPod{namespace: p.Namespace, name: p.Name, ip: p.Status.PodIP, port: o.Port, phase: p.Status.Phase,
					running: p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "", created: p.CreationTimestamp.Time}
				if a.port == 0 {
					a.port = reportPort(p)
				}
				prev, ok := out[p.Spec.NodeName]
				if !ok || a.running && !prev.running || a.running == prev.running && a.created.After(prev.created) {
					out[p.Spec.NodeName] = a
				}
			}
		})
	if err != nil {
		return nil, fmt.Errorf("listing agent pods (%s) in namespace %s: %w", o.Selector, o.Namespace, err)
	}
	return out, nil
}

// reportPort is the agent container's port named PortName, else DefaultPort.
func reportPort(p *corev1.Pod) int {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == PortName {
				return int(port.ContainerPort)
			}
		}
	}
	return DefaultPort
}

func listNodeNames(ctx context.Context, c API) ([]string, error) {
	var names []string
	err := eachPage(ctx, metav1.ListOptions{},
		func(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
			return c.ListNodes(ctx, opts)
		},
		func(l *corev1.NodeList) string { return l.Continue },
		func(l *corev1.NodeList) {
			for _, n := range l.Items {
				names = append(names, n.Name)
			}
		})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

// eachPage lists page by page (pageSize objects each), handing each page to each before asking
// for the next: memory holds one page whatever the cluster's size.
func eachPage[L any](ctx context.Context, opts metav1.ListOptions, list func(context.Context, metav1.ListOptions) (L, error),
	cont func(L) string, each func(L)) error {
	opts.Limit = pageSize
	for {
		l, err := list(ctx, opts)
		if err != nil {
			if apierrors.IsResourceExpired(err) {
				return fmt.Errorf("the listing outlived the API server's continue token (rerun): %w", err)
			}
			return err
		}
		each(l)
		next := cont(l)
		if next == "" {
			return nil
		}
		opts.Continue = next
	}
}
