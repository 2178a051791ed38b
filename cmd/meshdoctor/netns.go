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
}

func (n *netnsOptions) register(f *pflag.FlagSet) {
	f.StringArrayVar(&n.paths, "netns", nil, "check this network namespace instead of discovering pods (repeatable)")
	f.StringVar(&n.annotations, "annotations", "",
		"JSON file with the pod annotations that apply to the --netns targets; "+
			fileKeyCNIMode+", "+fileKeyProxyUID+" and "+fileKeyProxyGID+" say what discovery would have learned from the runtime")
}

// targets returns the --netns targets with what the --annotations file says of them, or nil
// without --netns. A file that is not a JSON object of strings, or that Istio's rule writer could
// not have been given, is an error that names it.
func (n *netnsOptions) targets() ([]nodecheck.Target, error) {
	if len(n.paths) == 0 {
		if n.annotations != "" {
			return nil, fmt.Errorf("--annotations applies to --netns targets; discovered pods carry their own")
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
	if _, err := intent.Resolve(proto); err != nil {
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
