package istiocni

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Exclusions are the namespaces whose pods istio-cni leaves alone (its plugin's
// exclude_namespaces, cni.excludeNamespaces in Istio's values): no CNI rules for sidecar pods
// there, no ambient enrolment.
type Exclusions struct {
	Namespaces []string `json:"namespaces"`
	// File is the CNI config the list was read from (the one the runtime uses).
	File string `json:"file"`
	// Multus: that config is multus's, so istio-cni is not chained there but attached to each pod
	// by its k8s.v1.cni.cncf.io/networks annotation (Istio's multus provider mode).
	Multus bool `json:"multus,omitempty"`
}

// Excludes says whether istio-cni leaves namespace ns alone.
func (e Exclusions) Excludes(ns string) bool { return slices.Contains(e.Namespaces, ns) }

// MultusNetworks are the networks a pod's k8s.v1.cni.cncf.io/networks annotation asks multus for,
// as "namespace/name" or "name": a comma-separated list ("a, ns/b@eth1") or a JSON list of
// {"name", "namespace"} objects, the two forms Istio's injector appends istio-cni to.
func MultusNetworks(value string) ([]string, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, nil
	}
	var out []string
	if strings.HasPrefix(value, "[") {
		var list []struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		}
		if err := json.Unmarshal([]byte(value), &list); err != nil {
			return nil, fmt.Errorf("the k8s.v1.cni.cncf.io/networks annotation is neither a list of names nor JSON: %w", err)
		}
		for _, n := range list {
			if n.Namespace != "" {
				out = append(out, n.Namespace+"/"+n.Name)
			} else {
				out = append(out, n.Name)
			}
		}
		return out, nil
	}
	for _, item := range strings.Split(value, ",") {
		item, _, _ = strings.Cut(strings.TrimSpace(item), "@")
		if item != "" {
			out = append(out, item)
		}
	}
	return out, nil
}

// AttachesIstioCNI says whether multus networks name istio-cni's NetworkAttachmentDefinition
// (default/istio-cni as Istio's injector adds it, in any namespace).
func AttachesIstioCNI(networks []string) bool {
	return slices.ContainsFunc(networks, func(n string) bool {
		_, name, ok := strings.Cut(n, "/")
		if !ok {
			name = n
		}
		return name == PluginType
	})
}

// ReadExclusions reads exclude_namespaces of the istio-cni plugin in the CNI configs the runtime
// loads: the first loads of confDir in name order (RuntimeCNI.Loads; 0: all), the first of them
// that chains istio-cni. Empty without error when istio-cni is not chained there; an error when
// the directory cannot be read.
func ReadExclusions(confDir string, loads int) (Exclusions, error) {
	files, err := listConfigFiles(confDir)
	if err != nil {
		return Exclusions{}, err
	}
	inUse, _ := loaded(files, loads)
	for i, f := range inUse {
		cf, plugins := readConfigFile(f)
		if cf.Error != "" {
			return Exclusions{}, nil // the istio-cni check reports the broken config
		}
		if i == 0 && slices.ContainsFunc(plugins, func(p map[string]any) bool { return p["type"] == "multus" }) {
			return Exclusions{File: f, Multus: true}, nil
		}
		if ex, ok, err := exclusionsOf(f, plugins); ok || err != nil {
			return ex, err
		}
	}
	return Exclusions{}, nil
}

// exclusionsOf reads exclude_namespaces of the istio-cni plugin among plugins, the config file's;
// false when none of them is istio-cni.
func exclusionsOf(file string, plugins []map[string]any) (Exclusions, bool, error) {
	for _, p := range plugins {
		if t, _ := p["type"].(string); t != PluginType {
			continue
		}
		list, _ := p["exclude_namespaces"].([]any)
		ex := Exclusions{File: file}
		for _, v := range list {
			s, ok := v.(string)
			if !ok {
				return Exclusions{}, true, fmt.Errorf("%s: exclude_namespaces holds %v, not a namespace", file, v)
			}
			if s = strings.TrimSpace(s); s != "" {
				ex.Namespaces = append(ex.Namespaces, s)
			}
		}
		return ex, true, nil
	}
	return Exclusions{}, false, nil
}
