package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// Keys of the --annotations file that are meshdoctor's own, not the pod's: what discovery learns
// from the runtime for a real pod, given by hand for a bare network namespace. They become the
// target's typed facts and never reach its annotations.
const (
	fileKeyCNIMode  = "meshdoctor.io/cni-mode"  // "true": the istio-cni plugin wrote the rules
	fileKeyProxyUID = "meshdoctor.io/proxy-uid" // istio-proxy's user
	fileKeyProxyGID = "meshdoctor.io/proxy-gid" // istio-proxy's group (default: the user)
)

// netnsOptions are the flags of bare network-namespace targets, the same for check and agent.
type netnsOptions struct {
	paths       []string
	annotations string
	initArgs    string
	initEnv     []string
}

func (n *netnsOptions) register(f *pflag.FlagSet) {
	f.StringArrayVar(&n.paths, "netns", nil, "check this network namespace instead of discovering pods (repeatable)")
	f.StringVar(&n.annotations, "annotations", "",
		"JSON file with the pod annotations that apply to the --netns targets; "+
			fileKeyCNIMode+", "+fileKeyProxyUID+" and "+fileKeyProxyGID+" say what discovery would have learned from the runtime")
	f.StringVar(&n.initArgs, "init-args", "",
		"istio-init's command line as the runtime started it, for the --netns targets: a JSON array "+
			`('["pilot-agent","istio-iptables","-p","15001","-x",""]', needed for empty values) or words separated by spaces; `+
			"the rules are then judged against it, as for a discovered pod (istio-validation's with "+fileKeyCNIMode+")")
	f.StringArrayVar(&n.initEnv, "init-env", nil, "NAME=VALUE in istio-init's environment, with --init-args (repeatable; proxyMetadata such as ISTIO_DUAL_STACK=true)")
}

// targets returns the --netns targets with what the --annotations file says of them, or nil
// without --netns. A file that is not a JSON object of strings, or that Istio's rule writer could
// not have been given, is an error that names it.
func (n *netnsOptions) targets() ([]nodecheck.Target, error) {
	if len(n.paths) == 0 {
		for _, f := range []struct {
			name string
			set  bool
		}{{"--annotations", n.annotations != ""}, {"--init-args", n.initArgs != ""}, {"--init-env", len(n.initEnv) > 0}} {
			if f.set {
				return nil, fmt.Errorf("%s applies to --netns targets; discovered pods carry their own", f.name)
			}
		}
		return nil, nil
	}
	proto := nodecheck.Target{Annotations: map[string]string{}}
	if n.annotations != "" {
		var err error
		if proto, err = readTargetFile(n.annotations); err != nil {
			return nil, err
		}
	}
	init, err := n.initContainer(proto.CNIMode)
	if err != nil {
		return nil, err
	}
	if init != nil {
		proto.Containers = []nodecheck.Container{*init}
	}
	if _, err := intent.Resolve(proto); err != nil {
		if init != nil {
			return nil, fmt.Errorf("--init-args: %w", err)
		}
		return nil, fmt.Errorf("%s: %w", n.annotations, err)
	}
	targets := make([]nodecheck.Target, 0, len(n.paths))
	for _, p := range n.paths {
		t := proto
		t.Netns = p
		targets = append(targets, t)
	}
	return targets, nil
}

// initContainer is the init container --init-args and --init-env describe: istio-init, or
// istio-validation in CNI mode, in a state the runtime did not tell (so that only its command line
// is judged). Nil without --init-args.
func (n *netnsOptions) initContainer(cniMode bool) (*nodecheck.Container, error) {
	if n.initArgs == "" {
		if len(n.initEnv) > 0 {
			return nil, fmt.Errorf("--init-env needs --init-args: it is the environment of that command line")
		}
		return nil, nil
	}
	argv, err := splitArgv(n.initArgs)
	if err != nil {
		return nil, fmt.Errorf("--init-args: %w", err)
	}
	for _, kv := range n.initEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("--init-env %q: want NAME=VALUE", kv)
		}
	}
	name := istiopod.ContainerIstioInit
	if cniMode {
		name = istiopod.ContainerIstioValidation
	}
	return &nodecheck.Container{Name: name, Role: nodecheck.RoleInit, State: nodecheck.ContainerUnknown,
		UID: -1, GID: -1, Args: argv, Env: n.initEnv}, nil
}

// splitArgv reads a command line given on meshdoctor's own: a JSON array of strings, or words
// separated by white space.
func splitArgv(s string) ([]string, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "[") {
		var argv []string
		if err := json.Unmarshal([]byte(s), &argv); err != nil {
			return nil, fmt.Errorf("not a JSON array of strings: %w", err)
		}
		return argv, nil
	}
	return strings.Fields(s), nil
}

// readTargetFile reads an --annotations file into a target's annotations and typed facts.
func readTargetFile(path string) (nodecheck.Target, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nodecheck.Target{}, fmt.Errorf("reading annotations: %w", err)
	}
	var a map[string]string
	if err := json.Unmarshal(data, &a); err != nil {
		return nodecheck.Target{}, fmt.Errorf("annotations file %s must be a JSON object of strings: %w", path, err)
	}
	if a == nil {
		a = map[string]string{}
	}
	var t nodecheck.Target
	if v, ok := a[fileKeyCNIMode]; ok {
		if t.CNIMode, err = strconv.ParseBool(strings.TrimSpace(v)); err != nil {
			return t, fmt.Errorf("annotations file %s: %s: %q is not a boolean", path, fileKeyCNIMode, v)
		}
	}
	if v, ok := a[fileKeyProxyUID]; ok {
		uid, err := parseID(v)
		if err != nil {
			return t, fmt.Errorf("annotations file %s: %s: %w", path, fileKeyProxyUID, err)
		}
		t.ProxyUser = &nodecheck.User{UID: uid, GID: uid}
	}
	if v, ok := a[fileKeyProxyGID]; ok {
		if t.ProxyUser == nil {
			return t, fmt.Errorf("annotations file %s: %s without %s", path, fileKeyProxyGID, fileKeyProxyUID)
		}
		if t.ProxyUser.GID, err = parseID(v); err != nil {
			return t, fmt.Errorf("annotations file %s: %s: %w", path, fileKeyProxyGID, err)
		}
	}
	delete(a, fileKeyCNIMode)
	delete(a, fileKeyProxyUID)
	delete(a, fileKeyProxyGID)
	t.Annotations = a
	return t, nil
}

func parseID(s string) (int64, error) {
	id, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a numeric id", s)
	}
	return int64(id), nil
}
