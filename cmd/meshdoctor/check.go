package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
	"github.com/meshdoctor/meshdoctor/nodecheck/report"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
)

type checkOptions struct {
	netnsOptions // --netns, --annotations (netns.go)
	output       string
	nodeName     string
	nodeBackend  string
	nodeNetns    string
	hostRoot     string
	verbose      bool
	discovery    discoveryOptions
	node         nodeOptions       // --node-only, --since, --log-rules, CNI and log paths (nodeflags.go)
	proxyReady   proxyReadyOptions // --proxy-*, --app-log-window, --hold-application-until-proxy-starts (proxyready.go)
	// trafficCanary: prove rules that verify with a canary SYN per family (--traffic-canary).
	trafficCanary bool
	// socketLB: read the BPF programs effective on each pod's cgroup (--socket-lb).
	socketLB bool
}

func newCheckCommand() *cobra.Command {
	var o checkOptions
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Diagnose traffic capture once, print a report and exit",
		Long: `check runs one pass of every check and prints a report.

Without --netns it discovers every pod sandbox of the node through containerd (or --cri-endpoint)
and checks the pods meant to be captured: sidecar-injected and ambient pods. With --netns it checks
the given network namespaces, expected to carry Istio's sidecar capture as described by
--annotations (Istio's defaults without it).

Exit status: 0 nothing wrong, 1 at least one finding of severity error, 2 could not run (bad
flags, or no target could be checked at all).`,
		Example: `  meshdoctor check
  meshdoctor check --cri-endpoint unix:///run/crio/crio.sock -o json
  meshdoctor check --netns /var/run/netns/cni-1234
  meshdoctor check --netns /var/run/netns/cni-1234 --annotations pod-annotations.json -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCheck(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log each check as it runs (to stderr)")
	o.registerNodeFlags(f) // shared with agent (checks.go)
	return cmd
}

func runCheck(cmd *cobra.Command, o checkOptions) error {
	if o.output != "table" && o.output != "json" {
		return &exitError{code: exitCannot, err: fmt.Errorf("--output %q: want table or json", o.output)}
	}
	netnsTargets, err := o.netnsOptions.targets()
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))

	if len(o.paths) == 0 {
		confDir, runtimeCNI := o.node.confDir(o.hostRoot, log)
		o.node.chain = chainHistory(confDir, runtimeCNI.Loads(), log)
	}
	targets := netnsTargets
	if !o.node.nodeOnly && targets == nil {
		targets, err = discoverTargets(cmd.Context(), o, log)
	} else if o.node.nodeOnly {
		targets = nil
	}
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	rep := &nodecheck.Report{Node: nodeName(o.nodeName), Pods: []nodecheck.PodReport{}, Findings: []nodecheck.Finding{}}
	discovered := targets
	if len(o.paths) > 0 || o.node.nodeOnly {
		discovered = nil // bare namespaces say nothing of the node's pods
	}
	// Node findings first: pod checks link theirs with the node's conditions.
	if rep.Findings, err = o.node.nodeFindings(cmd.Context(), o.hostRoot, o.nodeNetnsPath(), discovered, log); err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	podChecks, err := o.podChecks(cmd.Context(), nodeConditions(rep.Findings), nsread.Reader{}, log)
	if err != nil {
		return &exitError{code: exitCannot, err: err}
	}
	runner := diagnose.Runner{Checks: podChecks, Log: log}
	outcomes := runner.Run(cmd.Context(), targets)
	unknown := 0
	for _, oc := range outcomes {
		rep.Pods = append(rep.Pods, oc.Pod)
		if oc.Pod.Verdict == nodecheck.VerdictUnknown {
			unknown++
		}
	}
	if o.output == "json" {
		err = report.WriteJSON(cmd.OutOrStdout(), rep)
	} else {
		err = report.WriteTable(cmd.OutOrStdout(), rep)
	}
	switch {
	case err != nil:
		return &exitError{code: exitCannot, err: err}
	case rep.HasErrors():
		return &exitError{code: exitFindings}
	case unknown > 0 && unknown == len(rep.Pods):
		return &exitError{code: exitCannot, err: errors.New("no target could be checked")}
	}
	return nil
}

func nodeName(flag string) string {
	if flag != "" {
		return flag
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return ""
}

// nodeNetnsPath is the node's network namespace: --node-netns, else PID 1's under --host-root.
func (o checkOptions) nodeNetnsPath() string {
	if o.nodeNetns != "" {
		return o.nodeNetns
	}
	return filepath.Join(o.hostRoot, "proc/1/ns/net")
}

// resolveNodeBackend turns --node-backend into the backend the capture check compares with; a
// host whose rules cannot be read is no reason to stop diagnosing pods, so auto degrades to none
// with a warning.
func resolveNodeBackend(ctx context.Context, o checkOptions, log *slog.Logger) (rules.Backend, error) {
	switch o.nodeBackend {
	case "nft":
		return rules.BackendNft, nil
	case "legacy":
		return rules.BackendLegacy, nil
	case "none", "":
		return "", nil
	case "auto":
		b, err := nsread.NodeBackend(ctx, o.nodeNetnsPath())
		if err != nil {
			log.Warn("cannot tell the node's iptables backend; backend mismatches will not be reported "+
				"(--node-netns names the node's network namespace, --node-backend its backend)", "err", err)
			return "", nil
		}
		return b, nil
	}
	return "", fmt.Errorf("--node-backend %q: want auto, nft, legacy or none", o.nodeBackend)
}
