package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiocni"
	"github.com/meshdoctor/meshdoctor/nodecheck/logscan"
	"github.com/meshdoctor/meshdoctor/nodecheck/netfilter"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
)

// nodeOptions are the flags of the node-level checks (istio-cni's install state, log evidence):
// where the node's CNI config, CNI plugins and logs are, how far back logs are read, which log
// rules apply. Paths default to their place under --host-root; an explicit one is used as given.
type nodeOptions struct {
	cniConfDir string
	cniBinDir  string
	// containerdConfig is containerd's config file, where the runtime's CNI config directory is
	// read ("" auto, "none" not read).
	containerdConfig string
	podLogDir        string
	since            time.Duration
	nodeOnly         bool
	logRules         string

	// Set by agent, not flags of check: where log offsets and conditions are kept across
	// restarts (--state-dir), and who sees each log match as it is found (the metrics).
	stateDir   string
	onLogMatch func(logscan.Match)
	// chain is the CNI chain's history the istio-cni check shows and discovery dates pods
	// against: rebuilt from modification times by check, kept live by the agent's watch.
	chain *cnichain.Timeline
}

func (n *nodeOptions) register(f *pflag.FlagSet) {
	f.StringVar(&n.cniConfDir, "cni-conf-dir", "", "the node's CNI config directory (default <host-root>/etc/cni/net.d)")
	f.StringVar(&n.containerdConfig, "containerd-config", "",
		"containerd's config file, where the CNI config directory pods are networked from is read (default "+
			"<host-root>/etc/containerd/config.toml, else CRI-O's <host-root>/etc/crio/crio.conf and crio.conf.d; "+
			"'none' reads neither); without --cni-conf-dir that directory is checked, with it a different one is reported")
	f.StringVar(&n.cniBinDir, "cni-bin-dir", "", "the node's CNI plugin directory (default <host-root>/opt/cni/bin)")
	f.StringVar(&n.podLogDir, "pod-log-dir", "", "kubelet's container log directory (default <host-root>/var/log/pods)")
	f.DurationVar(&n.since, "since", 30*time.Minute, "how far back logs are read")
	f.BoolVar(&n.nodeOnly, "node-only", false, "report node-level findings (istio-cni install, logs) without touching pods")
	f.StringVar(&n.logRules, "log-rules", "", "YAML file of log rules replacing the embedded defaults")
}

func (n *nodeOptions) path(flag, hostRoot, underRoot string) string {
	if flag != "" {
		return flag
	}
	return filepath.Join(hostRoot, underRoot)
}

// confDir is the CNI config directory the node checks read (as this process sees it): --cni-conf-dir,
// else the one the runtime's config names, else <host-root>/etc/cni/net.d; and what the runtime's
// config says, when read.
func (n *nodeOptions) confDir(hostRoot string, log *slog.Logger) (string, *istiocni.RuntimeCNI) {
	runtime := n.runtimeCNI(hostRoot, log)
	if n.cniConfDir == "" && runtime != nil {
		log.Debug("CNI config directory from the runtime's config", "runtime", runtime.Runtime, "file", runtime.ConfigFile, "dir", runtime.ConfDir)
		return filepath.Join(hostRoot, runtime.ConfDir), runtime
	}
	return n.path(n.cniConfDir, hostRoot, "etc/cni/net.d"), runtime
}

// chainHistory rebuilds the CNI chain's history of confDir, whose first loads files the runtime
// loads (0: all), from its files' modification times; nil, said in the log, when the directory
// cannot be read (the istio-cni check says why).
func chainHistory(confDir string, loads int, log *slog.Logger) *cnichain.Timeline {
	tl, err := cnichain.FromMtimes(confDir, istiocni.ChainInUseLoading(loads), 0)
	if err != nil {
		log.Debug("CNI chain history not rebuilt", "err", err)
		return nil
	}
	return tl
}

// runtimeCNI reads where the runtime takes its CNI config from; a config that cannot be read is
// said in the log and leaves the directory to --cni-conf-dir's default.
func (n *nodeOptions) runtimeCNI(hostRoot string, log *slog.Logger) *istiocni.RuntimeCNI {
	var r *istiocni.RuntimeCNI
	var err error
	switch n.containerdConfig {
	case "none":
		return nil
	case "":
		r, err = istiocni.ReadRuntimeCNI(hostRoot)
	default:
		if r, err = istiocni.ReadContainerdCNI("", n.containerdConfig); err == nil && r == nil {
			err = fmt.Errorf("--containerd-config %s: no such file", n.containerdConfig)
		}
	}
	if err != nil {
		log.Warn("cannot read the runtime's CNI settings; the CNI config directory is --cni-conf-dir's", "err", err)
		return nil
	}
	return r
}

// checks builds the node checks. discovered are the pods discovery found (nil with --netns or
// --node-only): the runtime's view of istio-cni-node and of the pods in CNI mode. nodeNetns is the
// node's network namespace, where istio-cni's native host table is looked for. close releases
// what the checks hold.
func (n *nodeOptions) checks(hostRoot, nodeNetns string, discovered []nodecheck.Target, log *slog.Logger) (checks []nodecheck.NodeCheck, close func(), err error) {
	if n.since <= 0 {
		return nil, nil, fmt.Errorf("--since %s: want a positive duration", n.since)
	}
	rules, err := logscan.DefaultRules()
	if n.logRules != "" {
		var data []byte
		if data, err = os.ReadFile(n.logRules); err != nil {
			return nil, nil, fmt.Errorf("--log-rules: %w", err)
		}
		if rules, err = logscan.ParseRules(data); err != nil {
			return nil, nil, fmt.Errorf("--log-rules %s: %w", n.logRules, err)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	scanner, err := logscan.New(logscan.Config{
		PodLogDir: n.path(n.podLogDir, hostRoot, "var/log/pods"),
		JournalDirs: []string{
			filepath.Join(hostRoot, "var/log/journal"),
			filepath.Join(hostRoot, "run/log/journal"),
		},
		SyslogFiles: []string{
			filepath.Join(hostRoot, "var/log/syslog"),
			filepath.Join(hostRoot, "var/log/messages"),
		},
		Rules:    rules,
		Since:    n.since,
		StateDir: n.stateDir,
		OnMatch:  n.onLogMatch,
		Log:      log,
	})
	if err != nil {
		return nil, nil, err
	}
	confDir, runtime := n.confDir(hostRoot, log)
	cni := &istiocni.Check{
		HostRoot: hostRoot,
		ConfDir:  confDir,
		BinDir:   n.path(n.cniBinDir, hostRoot, "opt/cni/bin"),
		Runtime:  runtime,
		Chain:    n.chain,
	}
	if discovered != nil {
		cni.Pods = istiocni.FromTargets(discovered)
	}
	nf := &netfilter.Check{Reader: netfilter.Reader{HostRoot: hostRoot}, HostRoot: hostRoot,
		AmbientHost: ambienthost.Reader{NodeNetns: nodeNetns, Rules: nsread.Reader{}}}
	return []nodecheck.NodeCheck{cni, nf, &logscan.Check{Scanner: scanner}}, scanner.Close, nil
}

// nodeFindings builds and runs the node checks: what `check` adds to every report. Its error is
// for bad node flags, or, with --node-only, for no node check able to run; otherwise a check that
// cannot run is a warning and the pods' report still stands.
func (n *nodeOptions) nodeFindings(ctx context.Context, hostRoot, nodeNetns string, discovered []nodecheck.Target, log *slog.Logger) ([]nodecheck.Finding, error) {
	checks, closeChecks, err := n.checks(hostRoot, nodeNetns, discovered, log)
	if err != nil {
		return nil, err
	}
	defer closeChecks()
	out := (&diagnose.NodeRunner{Checks: checks, Log: log}).Run(ctx)
	if out.AllFailed() {
		err = fmt.Errorf("no node check could run: %w", out.Err)
		if !n.nodeOnly {
			log.Warn("node-level findings are missing from the report", "err", err)
			err = nil
		}
	}
	return out.Findings, err
}
