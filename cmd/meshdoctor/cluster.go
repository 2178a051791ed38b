package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster"
	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster/summary"
	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/kubeapi"
)

// kubectlPlugin is the name under which kubectl runs meshdoctor as `kubectl meshdoctor`.
const kubectlPlugin = "kubectl-meshdoctor"

// isKubectlPlugin reports whether the binary was started as kubectl's plugin: then it is the
// cluster command.
func isKubectlPlugin(argv0 string) bool { return filepath.Base(argv0) == kubectlPlugin }

type clusterOptions struct {
	kubeconfig string
	context    string
	namespace  string
	selector   string
	port       int
	parallel   int
	timeout    time.Duration
	output     string
	maxLines   int
	top        int
	rootCauses bool
}

func newClusterCommand(use string) *cobra.Command {
	var o clusterOptions
	cmd := &cobra.Command{
		Use:   use,
		Short: "Every node's report in one place, with the cluster-level root causes",
		Long: `cluster finds the meshdoctor agent pods, reads each node's report through the API server's pod
proxy with your own credentials, and prints where in the cluster traffic capture is broken and why:
nodes and pods checked, broken pods by finding code, the worst nodes, one line per broken pod with
its remedy, and nodes without an agent or whose agent does not answer. It also reads the cluster
for what no node can see: pod security stripping or refusing istio-init's capabilities
(PodSecurityBlocksInit), nodes whose pods rely on istio-cni without a ready istio-cni-node pod
(IstioCNINodeNotReady), and the API server's availability behind istiod's outages
(IstiodAPIServerUnreachable). It only reads.

Installed as kubectl-meshdoctor on the PATH, it is also "kubectl meshdoctor".

Your credentials need: get on pods/proxy and list on pods in the agents' namespace, list on
nodes; for the root causes, list on namespaces, events, pods and apps/deployments in every
namespace, get on pods, and list on discovery.k8s.io/endpointslices in default. What you may not read is said, and that analysis is skipped.

Exit status: 0 nothing wrong, 1 at least one finding of severity error, 2 could not run (no agent
found, no agent answered, bad flags).`,
		Example: `  meshdoctor cluster
  kubectl meshdoctor -o json > cluster.json
  meshdoctor cluster -n monitoring -l app=meshdoctor --parallel 64 --timeout 5s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCluster(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config; in a pod, its service account)")
	f.StringVar(&o.context, "context", "", "kubeconfig context to use (default the current one)")
	f.StringVarP(&o.namespace, "namespace", "n", cluster.DefaultNamespace, "namespace the meshdoctor agents run in")
	f.StringVarP(&o.selector, "selector", "l", cluster.DefaultSelector, "label selector of the agent pods")
	f.IntVar(&o.port, "port", 0, fmt.Sprintf("port of the agents' --report-address (default: their container port named %q, else %d)",
		cluster.PortName, cluster.DefaultPort))
	f.IntVar(&o.parallel, "parallel", cluster.DefaultParallel, "how many nodes are read at once")
	f.DurationVar(&o.timeout, "timeout", cluster.DefaultTimeout, "how long one node's report may take")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json (json streams every node's whole report)")
	f.IntVar(&o.maxLines, "max-lines", summary.DefaultMaxLines, "at most this many broken pods, node findings and nodes without a report listed in the table (all are counted)")
	f.IntVar(&o.top, "top", summary.DefaultTop, "how many worst nodes the table lists")
	f.BoolVar(&o.rootCauses, "root-causes", true, "read namespaces, events, pods, the API server's endpoints and istiod for the cluster-level root causes")
	return cmd
}

func runCluster(cmd *cobra.Command, o clusterOptions) error {
	if o.output != "table" && o.output != "json" {
		return &exitError{code: exitCannot, err: fmt.Errorf("--output %q: want table or json", o.output)}
	}
	if o.parallel < 1 || o.timeout <= 0 || o.port < 0 || o.port > 65535 {
		return &exitError{code: exitCannot, err: errors.New("--parallel and --timeout must be positive, --port a port number")}
	}
	ctx := cmd.Context()
	client, err := clusterClient(o)
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	g := &cluster.Gatherer{Client: client, Options: cluster.Options{
		Namespace: o.namespace, Selector: o.selector, Port: o.port, Parallel: o.parallel, Timeout: o.timeout}}
	var caps cluster.CapabilityCheck
	if o.rootCauses {
		g.Enrich = caps.Enrich(g)
	}

	// The cluster's state is read while the nodes answer.
	var state *cluster.State
	var stateErr error
	var wg sync.WaitGroup
	if o.rootCauses {
		wg.Add(1)
		go func() { defer wg.Done(); state, stateErr = g.ReadState(ctx) }()
	}

	out := cmd.OutOrStdout()
	sum := summary.New(summary.Options{MaxLines: o.maxLines, Top: o.top})
	sink := &clusterSink{sum: sum, progress: newProgress(cmd.ErrOrStderr())}
	if o.output == "json" {
		sink.json = summary.NewJSONStream(out)
	}
	outcome, err := g.Gather(ctx, sink)
	sink.progress.done()
	wg.Wait()
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	if stateErr != nil {
		return &exitError{code: exitCannot, err: stateErr}
	}

	view := summary.View{Summary: sum.Result(), Notes: outcome.Notes}
	if state != nil {
		view.Findings = state.Findings(sum.Outage())
		view.APIServer, view.CNI = &state.APIServer, state.CNI
		view.Notes = append(view.Notes, state.Notes...)
		if n := caps.Note(); n != "" {
			view.Notes = append(view.Notes, n)
		}
	}
	if sink.json != nil {
		err = sink.json.Close(view)
	} else {
		err = summary.WriteTable(out, view)
	}
	switch {
	case err != nil:
		return &exitError{code: exitCannot, err: err}
	case view.Summary.Nodes.Reported == 0 && outcome.Forbidden > 0:
		return &exitError{code: exitCannot, err: fmt.Errorf(
			"no report read: your credentials may not get pods/proxy in namespace %s (refused for %d node(s))", o.namespace, outcome.Forbidden)}
	case view.Summary.Nodes.Reported == 0:
		return &exitError{code: exitCannot, err: errors.New("no agent answered: no node's report could be read")}
	case view.HasErrors():
		return &exitError{code: exitFindings}
	}
	return nil
}

// clusterClient is the caller's client, from the kubeconfig as kubectl finds it. Its rate limit
// is kubectl's (50/s, bursts of 100): the default 5/s would take minutes over thousands of nodes.
func clusterClient(o clusterOptions) (*kubeapi.Client, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.kubeconfig != "" {
		if _, err := os.Stat(o.kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		rules.ExplicitPath = o.kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "meshdoctor-cluster/" + version
	cfg.QPS, cfg.Burst = 50, 100
	// Protobuf halves what the pod listing moves; the agents' reports are JSON whatever is asked.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c, err := kubeapi.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return c, nil
}

// clusterSink hands each node to the summary, the JSON stream and the progress line.
type clusterSink struct {
	sum      *summary.Summary
	json     *summary.JSONStream
	progress *progress
}

func (s *clusterSink) Planned(n int) { s.progress.plan(n) }

func (s *clusterSink) Node(r cluster.NodeResult) {
	s.sum.Add(r)
	if s.json != nil {
		s.json.Node(r)
	}
	s.progress.node(r.Status == cluster.StatusReported)
}

// progress is the line that says how far the gathering is, on a terminal only (stderr), redrawn
// at most ten times a second and erased at the end.
type progress struct {
	w                   io.Writer
	total, seen, silent int
	last                time.Time
	drawn               bool
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return &progress{}
	}
	return &progress{w: w}
}

func (p *progress) plan(n int) { p.total = n; p.draw(true) }

func (p *progress) node(reported bool) {
	p.seen++
	if !reported {
		p.silent++
	}
	p.draw(p.seen == p.total)
}

func (p *progress) draw(force bool) {
	if p.w == nil || !force && time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last, p.drawn = time.Now(), true
	_, _ = fmt.Fprintf(p.w, "\r\033[Kmeshdoctor cluster: %d/%d node(s) read, %d without a report", p.seen, p.total, p.silent)
}

func (p *progress) done() {
	if p.w != nil && p.drawn {
		_, _ = io.WriteString(p.w, "\r\033[K")
	}
}
