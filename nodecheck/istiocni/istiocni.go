// Package istiocni checks istio-cni's install state on a node.
//
// It is the node-level half of the guide's "istio-init crashes" problem: the primary CNI config
// chains the istio-cni plugin, the plugin binary is in the CNI bin directory, its kubeconfig is
// present, and the istio-cni-node pod of the node is ready. It reads files only; pod readiness
// comes from a PodStates source (the container runtime or the API server) and is reported
// unknown when none is wired.
package istiocni

import (
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
)

// PluginType is the "type" of the istio-cni plugin in a CNI config, and its binary's name.
const PluginType = "istio-cni"

// Defaults of Istio's installer (cni/pkg/constants): the plugin's run directory on the node and
// the kubeconfig it writes there.
const (
	DefaultAgentRunDir  = "/var/run/istio-cni"
	KubeconfigName      = "istio-cni-kubeconfig"
	maxConfigFileSize   = 1 << 20
	maxKubeconfigSize   = 1 << 20
	maxConfigFilesShown = 20
)

// AgentState is what the node's container runtime (or the API server) says about the
// istio-cni-node pod on this node.
type AgentState struct {
	// Found is false when no istio-cni-node pod runs on this node.
	Found      bool             `json:"found"`
	Namespace  string           `json:"namespace,omitempty"`
	Name       string           `json:"name,omitempty"`
	Ready      bool             `json:"ready"`
	Containers []ContainerState `json:"containers,omitempty"`
	// Source says where the state comes from ("containerd", "api").
	Source string `json:"source,omitempty"`
}

// ContainerState is one container of the istio-cni-node pod.
type ContainerState struct {
	Name         string `json:"name"`
	Ready        bool   `json:"ready"`
	State        string `json:"state"` // running, waiting, exited…
	Reason       string `json:"reason,omitempty"`
	RestartCount int    `json:"restartCount,omitempty"`
}

// PodStates is the narrow view of the node's pods this check needs. Pod discovery (containerd,
// or the API server when available) implements it.
type PodStates interface {
	// IstioCNIAgent returns the state of this node's istio-cni-node pod.
	IstioCNIAgent(ctx context.Context) (AgentState, error)
	// CNIModePods returns the pods on this node ("namespace/name") whose sidecar capture relies
	// on istio-cni: injected with the istio-validation init container instead of istio-init.
	CNIModePods(ctx context.Context) ([]string, error)
}

// Check inspects istio-cni's install state. Paths are as this process sees the node's files
// (under --host-root); paths found inside configs are host paths and are resolved under HostRoot.
type Check struct {
	HostRoot string
	ConfDir  string
	BinDir   string
	// Pods gives istio-cni-node readiness and the pods that need istio-cni; nil: unknown.
	Pods PodStates
	// Runtime is where the node's container runtime reads CNI config (ReadRuntimeCNI), when its
	// config was readable: a ConfDir other than the runtime's is reported.
	Runtime *RuntimeCNI
	// Chain is the history of the CNI chain (the agent's inotify watch, or check's rebuild from
	// modification times), shown in the state; nil: none kept.
	Chain *cnichain.Timeline
}

var _ nodecheck.NodeCheck = (*Check)(nil)

// Name names the check in reports and metrics.
func (c *Check) Name() string { return "istio-cni" }

// State is what the check found, for the debug endpoint and the findings' evidence.
type State struct {
	ConfDir string `json:"confDir"`
	// Runtime is what the runtime's own config says of its CNI config directory, when read.
	Runtime *RuntimeCNI `json:"runtime,omitempty"`
	// ConfigFiles are the CNI config files in the order the runtime reads them.
	ConfigFiles []ConfigFile `json:"configFiles"`
	// Primary is the file of the pod's default network: the first one in name order.
	Primary string `json:"primary,omitempty"`
	// InUse are the files the runtime loads, Primary first, when it loads more than Primary
	// (containerd's max_conf_num, RuntimeCNI.Loads); at most maxConfigFilesShown of them.
	InUse []string `json:"inUse,omitempty"`
	// Chained says a config the runtime loads lists the istio-cni plugin: the primary one, or the
	// one ChainedIn names.
	Chained bool `json:"chained"`
	// ChainedIn is the file that chains istio-cni when it is a loaded file other than Primary.
	ChainedIn string `json:"chainedIn,omitempty"`
	// IstioElsewhere lists other config files that mention istio-cni (not loaded by the runtime).
	IstioElsewhere []string `json:"istioElsewhere,omitempty"`
	// Multus is set when the primary config is multus: istio-cni is then configured in
	// NetworkAttachmentDefinitions, which this check does not read.
	Multus     bool            `json:"multus,omitempty"`
	Binary     BinaryState     `json:"binary"`
	Kubeconfig KubeconfigState `json:"kubeconfig"`
	// Agent is the istio-cni-node pod; Readiness is ready, not-ready, absent or unknown.
	Agent       *AgentState `json:"agent,omitempty"`
	Readiness   string      `json:"readiness"`
	CNIModePods []string    `json:"cniModePods,omitempty"`
	PodsError   string      `json:"podsError,omitempty"`
	// ChainTimeline is which file of ConfDir changed when, and whether the config in use then
	// chained istio-cni, oldest first.
	ChainTimeline []cnichain.Change `json:"chainTimeline,omitempty"`
}

// ConfigFile is one CNI config file and what it chains.
type ConfigFile struct {
	File    string   `json:"file"`
	Name    string   `json:"name,omitempty"`
	Plugins []string `json:"plugins,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// BinaryState is the istio-cni plugin binary in the CNI bin dir.
type BinaryState struct {
	Path    string `json:"path"`
	Present bool   `json:"present"`
	Problem string `json:"problem,omitempty"`
	// IstioVersion is the istio.io/istio module version the binary was built from.
	IstioVersion string `json:"istioVersion,omitempty"`
}

// KubeconfigState is the kubeconfig the plugin uses to look up pods.
type KubeconfigState struct {
	Path    string `json:"path,omitempty"`
	Present bool   `json:"present"`
	Problem string `json:"problem,omitempty"`
	Server  string `json:"server,omitempty"`
}

// CheckNode inspects the install. A missing CNI config directory is an error (the check cannot
// say anything, and it usually means --cni-conf-dir or --host-root is wrong); problems found are
// findings.
func (c *Check) CheckNode(ctx context.Context) (nodecheck.Result, error) {
	st, err := c.Inspect(ctx)
	if err != nil {
		return nodecheck.Result{Detail: st}, err
	}
	return nodecheck.Result{Findings: Findings(st), Detail: st}, nil
}

// nodePath turns a path as this process sees it into the path on the node, for messages: the
// agent sees the node's / under --host-root.
func (c *Check) nodePath(p string) string {
	if c.HostRoot == "" || c.HostRoot == "/" {
		return p
	}
	rel, err := filepath.Rel(c.HostRoot, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		return p
	}
	return "/" + rel
}

// Inspect reads the node's files (and the pod states when wired) into a State. Paths in the
// state are the node's.
func (c *Check) Inspect(ctx context.Context) (*State, error) {
	st := &State{ConfDir: c.nodePath(c.ConfDir), Readiness: "unknown", Runtime: c.Runtime}
	if c.Chain != nil {
		st.ChainTimeline = c.Chain.Changes()
	}
	files, err := listConfigFiles(c.ConfDir)
	if err != nil {
		return st, err
	}
	loads := c.Runtime.Loads()
	inUse, _ := loaded(files, loads)
	var istioPlugin map[string]any
	for i, path := range files {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("inspecting CNI config: %w", err)
		}
		cf, plugins := readConfigFile(path)
		cf.File = c.nodePath(path)
		if i < maxConfigFilesShown {
			st.ConfigFiles = append(st.ConfigFiles, cf)
		}
		hasIstio := false
		for _, p := range plugins {
			if p["type"] == PluginType {
				hasIstio = true
				if i == 0 || istioPlugin == nil {
					istioPlugin = p
				}
			}
		}
		switch {
		case i == 0:
			st.Primary = c.nodePath(path)
			st.Chained = hasIstio
			st.Multus = slices.ContainsFunc(plugins, func(p map[string]any) bool { return p["type"] == "multus" })
		case i < len(inUse):
			if hasIstio && !st.Chained {
				st.Chained, st.ChainedIn = true, c.nodePath(path)
			}
		case hasIstio:
			st.IstioElsewhere = append(st.IstioElsewhere, c.nodePath(path))
		}
		if len(inUse) > 1 && i < len(inUse) && i < maxConfigFilesShown {
			st.InUse = append(st.InUse, c.nodePath(path))
		}
	}
	st.Binary = c.inspectBinary()
	st.Kubeconfig = c.inspectKubeconfig(istioPlugin)
	if c.Pods != nil {
		agent, err := c.Pods.IstioCNIAgent(ctx)
		switch {
		case err != nil:
			st.PodsError = err.Error()
		case !agent.Found:
			st.Agent, st.Readiness = &agent, "absent"
		case agent.Ready:
			st.Agent, st.Readiness = &agent, "ready"
		default:
			st.Agent, st.Readiness = &agent, "not-ready"
		}
		pods, err := c.Pods.CNIModePods(ctx)
		if err != nil && st.PodsError == "" {
			st.PodsError = err.Error()
		}
		st.CNIModePods = pods
	}
	return st, nil
}

// ChainInUse reads which config of dir the runtime uses and whether it chains istio-cni, for a
// runtime that loads one file (RuntimeCNI.Loads): the cnichain.Inspector of a node whose runtime
// config says no more. An unreadable primary, and multus (istio-cni attached per pod), are
// cnichain.Unknown.
func ChainInUse(dir string) (cnichain.Snapshot, error) { return chainInUse(dir, 1) }

// ChainInUseLoading is ChainInUse for a runtime that loads the first loads files of dir (0: all),
// as RuntimeCNI.Loads says: istio-cni chained in any of them runs for every pod.
func ChainInUseLoading(loads int) cnichain.Inspector {
	return func(dir string) (cnichain.Snapshot, error) { return chainInUse(dir, loads) }
}

func chainInUse(dir string, loads int) (cnichain.Snapshot, error) {
	files, err := listConfigFiles(dir)
	if err != nil {
		return cnichain.Snapshot{Chain: cnichain.Unknown}, err
	}
	if len(files) == 0 {
		// No config at all: the runtime networks no pod, so no pod can miss istio-cni then.
		return cnichain.Snapshot{Chain: cnichain.Unknown}, nil
	}
	inUse, _ := loaded(files, loads)
	snap := cnichain.Snapshot{Primary: files[0], Chain: cnichain.Unchained}
	for i, f := range inUse {
		cf, plugins := readConfigFile(f)
		switch {
		case cf.Error != "":
			return cnichain.Snapshot{Primary: files[0], Chain: cnichain.Unknown}, fmt.Errorf("reading %s: %s", f, cf.Error)
		case i == 0 && slices.ContainsFunc(plugins, func(p map[string]any) bool { return p["type"] == "multus" }):
			snap.Chain = cnichain.Unknown
			return snap, nil
		case slices.ContainsFunc(plugins, func(p map[string]any) bool { return p["type"] == PluginType }):
			snap.Chain = cnichain.Chained
			return snap, nil
		}
	}
	return snap, nil
}

// listConfigFiles lists the files a CNI runtime loads (libcni's extensions), in name order.
func listConfigFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("CNI config directory %s does not exist (set --cni-conf-dir or --host-root): %w", dir, err)
		}
		return nil, fmt.Errorf("reading CNI config directory: %w", err)
	}
	var out []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if !e.IsDir() {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// readConfigFile parses a .conflist (a list of plugins) or a .conf/.json (one plugin). A file
// that does not parse is returned with its error, never a panic: the runtime will refuse it too.
func readConfigFile(path string) (ConfigFile, []map[string]any) {
	cf := ConfigFile{File: path}
	data, err := readBounded(path, maxConfigFileSize)
	if err != nil {
		cf.Error = err.Error()
		return cf, nil
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		cf.Error = jsonError(data, err)
		return cf, nil
	}
	cf.Name, _ = doc["name"].(string)
	var plugins []map[string]any
	if strings.HasSuffix(path, ".conflist") {
		raw, ok := doc["plugins"]
		if !ok {
			cf.Error = "no \"plugins\" list: not a network config list"
			return cf, nil
		}
		list, ok := raw.([]any)
		if !ok {
			cf.Error = "\"plugins\" is not a list"
			return cf, nil
		}
		for i, p := range list {
			m, ok := p.(map[string]any)
			if !ok {
				cf.Error = fmt.Sprintf("plugin %d is not an object", i)
				return cf, nil
			}
			plugins = append(plugins, m)
		}
		if len(plugins) == 0 {
			cf.Error = "the plugin list is empty"
		}
	} else {
		if _, ok := doc["type"].(string); !ok {
			cf.Error = "no plugin \"type\" (a config list in a .conf file?)"
			return cf, nil
		}
		plugins = []map[string]any{doc}
	}
	for _, p := range plugins {
		t, _ := p["type"].(string)
		if t == "" {
			cf.Error = "a plugin has no \"type\""
		}
		cf.Plugins = append(cf.Plugins, t)
	}
	return cf, plugins
}

// jsonError says where a JSON document is broken, as line:column.
func jsonError(data []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := 1, 1
		for _, b := range data[:min(int(se.Offset), len(data))] {
			if b == '\n' {
				line, col = line+1, 1
			} else {
				col++
			}
		}
		return fmt.Sprintf("malformed JSON at line %d, column %d: %v", line, col, err)
	}
	return fmt.Sprintf("malformed JSON: %v", err)
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, more than a config file can be (%d)", path, fi.Size(), limit)
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("reading: %w", err)
	}
	return data, nil
}

// inspectBinary checks the plugin binary: present, a regular executable file, and built from
// Istio (Go build info names the istio.io/istio module and its version).
func (c *Check) inspectBinary() BinaryState {
	local := filepath.Join(c.BinDir, PluginType)
	b := BinaryState{Path: c.nodePath(local)}
	fi, err := os.Stat(local)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return b
	case err != nil:
		b.Problem = err.Error()
		return b
	case !fi.Mode().IsRegular():
		b.Problem = "not a regular file"
		return b
	case fi.Size() == 0:
		b.Problem = "empty file (an interrupted copy?)"
		return b
	case fi.Mode()&0o111 == 0:
		b.Problem = fmt.Sprintf("not executable (mode %s)", fi.Mode())
		return b
	}
	b.Present = true
	info, err := buildinfo.ReadFile(local)
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			err = inner // the error names the path, which the finding already says
		}
		b.Problem = fmt.Sprintf("not a Go binary with build info (%v): not the istio-cni plugin", err)
		return b
	}
	if info.Main.Path == "istio.io/istio" {
		b.IstioVersion = info.Main.Version
	}
	for _, d := range info.Deps {
		if d.Path == "istio.io/istio" {
			b.IstioVersion = d.Version
		}
	}
	if b.IstioVersion == "" && !strings.HasPrefix(info.Path, "istio.io/istio/") {
		b.Problem = fmt.Sprintf("built from %s, not from Istio", info.Path)
	}
	return b
}

// inspectKubeconfig finds the kubeconfig the plugin uses: the kubernetes.kubeconfig field of older
// installs, else istio-cni-kubeconfig in the plugin's run directory (the default one when no
// config names the plugin).
func (c *Check) inspectKubeconfig(plugin map[string]any) KubeconfigState {
	var k KubeconfigState
	hostPath := ""
	if kube, ok := plugin["kubernetes"].(map[string]any); ok {
		hostPath, _ = kube["kubeconfig"].(string)
	}
	if hostPath == "" {
		runDir, _ := plugin["cni_agent_run_dir"].(string)
		if runDir == "" {
			runDir = DefaultAgentRunDir
		}
		hostPath = filepath.Join(runDir, KubeconfigName)
	}
	k.Path = hostPath
	data, err := readBounded(filepath.Join(c.HostRoot, hostPath), maxKubeconfigSize)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			k.Problem = err.Error()
		}
		return k
	}
	k.Present = true
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			User struct {
				Token      string `json:"token"`
				TokenFile  string `json:"tokenFile"`
				ClientCert string `json:"client-certificate-data"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := yaml.Unmarshal(data, &kc); err != nil {
		k.Problem = fmt.Sprintf("not a kubeconfig: %v", err)
		return k
	}
	if len(kc.Clusters) == 0 || kc.Clusters[0].Cluster.Server == "" {
		k.Problem = "no cluster server in it"
		return k
	}
	k.Server = kc.Clusters[0].Cluster.Server
	if len(kc.Users) == 0 || kc.Users[0].User.Token == "" && kc.Users[0].User.TokenFile == "" && kc.Users[0].User.ClientCert == "" {
		k.Problem = "no credentials in it (token or client certificate)"
	}
	return k
}
