package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/agent/debughttp"
	"github.com/meshdoctor/meshdoctor/agent/metrics"
	"github.com/meshdoctor/meshdoctor/agent/nftevents"
	"github.com/meshdoctor/meshdoctor/agent/podreport"
	"github.com/meshdoctor/meshdoctor/agent/podwatch"
	"github.com/meshdoctor/meshdoctor/agent/runtimeevents"
	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/kubeapi"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiocni"
	"github.com/meshdoctor/meshdoctor/nodecheck/logscan"
	"github.com/meshdoctor/meshdoctor/nodecheck/proxyready"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nftread"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
)

// shutdownGrace bounds the HTTP servers' shutdown; with the checks' own cancellation the agent
// exits well within a DaemonSet's default 30 s grace period.
const shutdownGrace = 5 * time.Second

// nftablesDebounce gathers the notifications of one rule change (iptables-nft-restore sends a
// batch) into one check of the pod.
const nftablesDebounce = 100 * time.Millisecond

type agentOptions struct {
	checkOptions
	kubeconfig      string
	stateDir        string
	metricsAddress  string
	debugAddress    string
	reportAddress   string
	recheckInterval time.Duration
	nodeInterval    time.Duration
	debounce        time.Duration
	workers         int
	perPodMetrics   bool
	watchNftables   bool
	logFormat       string
	logLevel        string
}

func newAgentCommand() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run as the per-node DaemonSet agent: watch, re-check and report",
		Long: `agent keeps checking the node's pods: when containerd says a container started or exited, when
the API server says a pod finished its init containers or became ready, and every
--recheck-interval (with jitter) in any case. It reports through Prometheus metrics
(--metrics-address), pod annotations and Kubernetes events (unless --kubeconfig=none), a
debug endpoint (--debug-address) with the report, each pod's raw rules and an HTML page, and,
with --report-address, the report alone for meshdoctor cluster (through the API server's pod proxy).

Without an API server (--kubeconfig=none, or while it is down) it keeps diagnosing from the
container runtime; annotations and events catch up when the API server is back.`,
		Example: `  meshdoctor agent                       # in the DaemonSet: in-cluster config, $NODE_NAME
  meshdoctor agent --kubeconfig=none --debug-address 127.0.0.1:9810`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd, o) },
	}
	f := cmd.Flags()
	o.registerNodeFlags(f)
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty: in-cluster config; none: no API server at all")
	f.StringVar(&o.stateDir, "state-dir", "", "directory for state kept across restarts (log offsets)")
	f.StringVar(&o.metricsAddress, "metrics-address", ":9809", "listen address of /metrics, /healthz and /readyz; empty: off")
	f.StringVar(&o.debugAddress, "debug-address", "127.0.0.1:9810",
		"listen address of the debug endpoint; off loopback it requires a bearer token (TokenReview + SubjectAccessReview); empty: off")
	f.StringVar(&o.reportAddress, "report-address", "",
		"listen address of the node report alone (GET "+debughttp.ReportPath+"), which meshdoctor cluster reads through the API server's pod proxy; "+
			"no token is checked (the API server drops the caller's), so bind it to the node's address ($(POD_IP):9811 in the DaemonSet) and grant "+
			"pods/proxy in the agent's namespace only to those who may read every node's report; empty: off")
	f.DurationVar(&o.recheckInterval, "recheck-interval", agent.DefaultRecheckInterval, "every pod is re-verified at least this often (with jitter)")
	f.DurationVar(&o.nodeInterval, "node-check-interval", agent.DefaultNodeInterval,
		"how often the node checks run (istio-cni's install, netfilter features, the log scan); a change of the CNI config directory runs them at once")
	f.DurationVar(&o.debounce, "debounce", agent.DefaultDebounce, "how long triggers are gathered before a check")
	f.IntVar(&o.workers, "workers", agent.DefaultWorkers, "how many pods are checked at once")
	f.BoolVar(&o.watchNftables, "watch-nftables", true,
		"re-verify a pod within "+nftablesDebounce.String()+" of a change of its nftables (iptables-nft and native nftables; one netlink socket per pod "+
			"listening to the kernel's change notifications); iptables-legacy pods stay on --recheck-interval")
	f.BoolVar(&o.perPodMetrics, "per-pod-metrics", false, "also expose meshdoctor_pod_verdict{namespace,pod,verdict} (one series per pod)")
	f.StringVar(&o.logFormat, "log-format", "json", "json or text")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func runAgent(cmd *cobra.Command, o agentOptions) error {
	log, err := newLogger(cmd, o.logFormat, o.logLevel)
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	ctx := cmd.Context()
	node := nodeName(o.nodeName)

	var client *kubeapi.Client
	if o.kubeconfig != "none" {
		cfg, err := restConfig(o.kubeconfig)
		if err != nil {
			return &exitError{code: exitCannot, err: err}
		}
		cfg.UserAgent = "meshdoctor-agent/" + version
		if client, err = kubeapi.New(cfg); err != nil {
			return &exitError{code: exitCannot, err: fmt.Errorf("API client: %w", err)}
		}
	}

	// Node checks first: the log scanner among them is the node conditions pod checks link
	// their findings with, as the node findings are for check.
	m := metrics.New(metrics.Options{Version: version, PerPod: o.perPodMetrics})
	o.node.stateDir = o.stateDir
	o.node.onLogMatch = func(match logscan.Match) { m.LogMatch(match.Rule) }
	// The CNI chain's history: what the files' modification times tell, then the watch (below).
	confDir, runtimeCNI := o.node.confDir(o.hostRoot, log)
	if o.node.chain = chainHistory(confDir, runtimeCNI.Loads(), log); o.node.chain == nil {
		o.node.chain = cnichain.NewTimeline(0)
	}
	nodeChecks, closeNode, err := o.node.checks(o.hostRoot, o.nodeNetnsPath(), nil, log)
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	defer closeNode()
	var conditions proxyready.NodeConditions
	var cni *istiocni.Check
	var names, logRules []string
	for _, c := range nodeChecks {
		switch c := c.(type) {
		case *logscan.Check:
			conditions, logRules = c.Scanner, c.RuleNames()
		case *istiocni.Check:
			cni = c
		}
	}
	// The agent reads every pod every recheck interval: its nftables reads are served from a
	// cache while a pod's ruleset generation stays the same.
	reader := nsread.NewCachingReader()
	registerNftablesCacheMetrics(m.Registry, reader.NFT)
	podChecks, err := o.podChecks(ctx, conditions, reader, log)
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	for _, c := range podChecks {
		names = append(names, c.Name())
	}
	for _, c := range nodeChecks {
		names = append(names, c.Name())
	}
	m.Declare(names, logRules)

	var runtime agent.Discoverer
	var closeRuntime func() error
	var listing *runtimeevents.Listing
	netnsTargets, err := o.netnsOptions.targets()
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	if netnsTargets != nil {
		runtime = staticTargets(netnsTargets)
	} else {
		rt, where, err := newRuntime(o.discovery, o.hostRoot)
		if err != nil {
			return &exitError{code: exitCannot, err: err}
		}
		closeRuntime = rt.Close
		if o.discovery.criEndpoint == "" {
			// containerd's events say when the node's listing changed (the watch below).
			listing = &runtimeevents.Listing{Runtime: rt, MaxAge: o.recheckInterval}
			rt = listing
			registerListingMetrics(m.Registry, listing)
		}
		runtime = cniExcluding{Runtime: rt, confDir: confDir, loads: runtimeCNI.Loads(), chain: o.node.chain, log: log}
		log.Info("discovering pods", "through", where)
	}
	if closeRuntime != nil {
		defer func() { _ = closeRuntime() }()
	}

	var reporter *podreport.Reporter
	var watch *podwatch.Watch
	a, err := agent.New(agent.Config{
		Node:            node,
		Runtime:         runtime,
		Runner:          &diagnose.Runner{Checks: podChecks, Log: log},
		NodeChecks:      nodeChecks,
		RecheckInterval: o.recheckInterval,
		NodeInterval:    o.nodeInterval,
		Debounce:        o.debounce,
		Workers:         o.workers,
		Log:             log,
		OnCheckRun:      m.CheckRun,
	})
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	m.Watch(a)
	if cni != nil && len(o.paths) == 0 {
		cni.Pods = agentPods{a} // the pods the agent discovered: istio-cni-node's state, the CNI-mode pods
	}

	var wg sync.WaitGroup
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil {
				log.Error("agent component stopped", "component", name, "err", err)
			}
		}()
	}
	if o.watchNftables {
		w, err := nftevents.New(func(c nftevents.Change) { a.TriggerPodWithin(c.Key, c.Describe(), nftablesDebounce) }, log)
		if err != nil {
			log.Warn("pods' nftables changes not watched; pods are re-verified every --recheck-interval", "err", err)
		} else {
			f := nftevents.NewFollower(w)
			a.Observe(f)
			run("nftables watch", w.Run)
			run("nftables subscriptions", func(ctx context.Context) error { f.Run(ctx); return nil })
		}
	}
	run("CNI config watch", func(ctx context.Context) error {
		w := &cnichain.Watcher{Dir: confDir, Inspect: istiocni.ChainInUseLoading(runtimeCNI.Loads()), Timeline: o.node.chain, Log: log,
			OnChange: func(c cnichain.Change) {
				why := fmt.Sprintf("CNI config %s (%s)", c.Event, c.Chain)
				a.CheckNodeNow(why)
				a.TriggerNode(why)
			}}
		return w.Run(ctx)
	})
	if client != nil {
		reporter = podreport.New(podreport.Config{Client: client, Node: node, Log: log,
			Pods: func(ns, name string) *corev1.Pod {
				if watch == nil {
					return nil
				}
				return watch.Pod(ns, name)
			}})
		a.Observe(reporter)
		watch, err = podwatch.New(client, node, 0, func(key, uid, why string) { a.TriggerPod(key, uid, "", why) }, reporter.Resync)
		if err != nil {
			return &exitError{code: exitCannot, err: err}
		}
		run("pod informer", func(ctx context.Context) error { watch.Run(ctx); return nil })
		run("pod reporter", func(ctx context.Context) error { reporter.Run(ctx); return nil })
	}
	if len(o.paths) == 0 && o.discovery.criEndpoint == "" {
		// The same socket discovery uses, as given (the DaemonSet mounts it at the same path).
		addr := o.discovery.containerdAddress
		run("containerd events", func(ctx context.Context) error {
			return runtimeevents.Watch(ctx, addr, func(id, why string) {
				if id == "" {
					a.TriggerNode(why)
					return
				}
				a.TriggerPod("", "", id, why)
			}, listing, log)
		})
	}
	if o.metricsAddress != "" {
		h := debughttp.MetricsHandler(a, m.Registry)
		run("metrics server", func(ctx context.Context) error {
			return debughttp.Serve(ctx, o.metricsAddress, h, debughttp.Options{ShutdownGrace: shutdownGrace})
		})
	}
	if o.debugAddress != "" {
		var auth debughttp.Authorizer
		if !debughttp.IsLoopback(o.debugAddress) {
			if client == nil {
				return &exitError{code: exitCannot, err: fmt.Errorf(
					"--debug-address %s is not loopback: tokens are checked with the API server, which --kubeconfig=none turns off", o.debugAddress)}
			}
			auth = &debughttp.KubeAuthorizer{Client: client}
		}
		h := debughttp.DebugHandler(a, m.Registry, auth, log)
		run("debug server", func(ctx context.Context) error {
			return debughttp.Serve(ctx, o.debugAddress, h, debughttp.Options{ShutdownGrace: shutdownGrace})
		})
	}
	if o.reportAddress != "" {
		// Reached through the API server's pod proxy, which never forwards the caller's token:
		// see debughttp.ReportHandler for why this listener serves the report and nothing else.
		h := debughttp.ReportHandler(a, log)
		run("report server", func(ctx context.Context) error {
			return debughttp.Serve(ctx, o.reportAddress, h, debughttp.Options{ShutdownGrace: shutdownGrace})
		})
	}
	log.Info("agent starting", "node", node, "version", version, "api", client != nil,
		"recheckInterval", o.recheckInterval.String(), "checks", names)
	err = a.Run(ctx)
	wg.Wait()
	log.Info("agent stopped")
	if err != nil && !errors.Is(err, context.Canceled) {
		return &exitError{code: exitCannot, err: err}
	}
	return nil
}

func newLogger(cmd *cobra.Command, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster API config (use --kubeconfig FILE, or --kubeconfig=none to run without the API): %w", err)
		}
		return cfg, nil
	}
	if _, err := os.Stat(kubeconfig); err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// staticTargets is discovery of fixed --netns targets.
type staticTargets []nodecheck.Target

func (s staticTargets) Discover(context.Context) ([]nodecheck.Target, error) { return s, nil }

// agentPods is istiocni.PodStates over the pods the agent discovered.
type agentPods struct{ a *agent.Agent }

func (p agentPods) targets() []nodecheck.Target {
	var ts []nodecheck.Target
	for _, s := range p.a.Pods() {
		ts = append(ts, s.Target)
	}
	return ts
}

// IstioCNIAgent implements istiocni.PodStates.
func (p agentPods) IstioCNIAgent(ctx context.Context) (istiocni.AgentState, error) {
	return istiocni.FromTargets(p.targets()).IstioCNIAgent(ctx)
}

// CNIModePods implements istiocni.PodStates.
func (p agentPods) CNIModePods(ctx context.Context) ([]string, error) {
	return istiocni.FromTargets(p.targets()).CNIModePods(ctx)
}

// registerListingMetrics counts how the agent's listings of the node's pods were answered: by
// the runtime, or by the last listing while containerd's events said nothing changed.
func registerListingMetrics(reg prometheus.Registerer, l *runtimeevents.Listing) {
	registerCountersBy(reg, "meshdoctor_pod_listings_total",
		"Listings of the node's pods the agent made, by what answered: the runtime, or the last listing while containerd's events said nothing changed.",
		"answered", map[string]func() uint64{
			"runtime": func() uint64 { return l.Stats().Listed },
			"cache":   func() uint64 { return l.Stats().Cached },
		})
}

// registerNftablesCacheMetrics counts the pods' nftables reads by how they were served: from the
// cache (the ruleset generation had not moved: one GETGEN, no dump) or by dumping the ruleset.
func registerNftablesCacheMetrics(reg prometheus.Registerer, c *nftread.Cache) {
	registerCountersBy(reg, "meshdoctor_nftables_reads_total",
		"Reads of the pods' nftables rules, by how they were served: from the cache while the ruleset generation stayed the same, or by dumping the ruleset.",
		"served", map[string]func() uint64{
			"cache": func() uint64 { return c.Stats().Hits },
			"dump":  func() uint64 { return c.Stats().Dumps },
		})
}

// registerCountersBy registers one counter called name per value of label, each read at scrape
// time from its count.
func registerCountersBy(reg prometheus.Registerer, name, help, label string, counts map[string]func() uint64) {
	for value, count := range counts {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: name, Help: help, ConstLabels: prometheus.Labels{label: value},
		}, func() float64 { return float64(count()) }))
	}
}
