package istiocni

import (
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
}

// Excludes says whether istio-cni leaves namespace ns alone.
func (e Exclusions) Excludes(ns string) bool { return slices.Contains(e.Namespaces, ns) }

// ReadExclusions reads exclude_namespaces of the istio-cni plugin in the CNI config the runtime
// uses (the first of confDir in name order). Empty without error when istio-cni is not chained
// there; an error when the directory cannot be read.
func ReadExclusions(confDir string) (Exclusions, error) {
	files, err := listConfigFiles(confDir)
	if err != nil {
		return Exclusions{}, err
	}
	if len(files) == 0 {
		return Exclusions{}, nil
	}
	cf, plugins := readConfigFile(files[0])
	if cf.Error != "" {
		return Exclusions{}, nil // the istio-cni check reports the broken primary config
	}
	for _, p := range plugins {
		if t, _ := p["type"].(string); t != PluginType {
			continue
		}
		list, _ := p["exclude_namespaces"].([]any)
		ex := Exclusions{File: files[0]}
		for _, v := range list {
			s, ok := v.(string)
			if !ok {
				return Exclusions{}, fmt.Errorf("%s: exclude_namespaces holds %v, not a namespace", files[0], v)
			}
			if s = strings.TrimSpace(s); s != "" {
				ex.Namespaces = append(ex.Namespaces, s)
			}
		}
		return ex, nil
	}
	return Exclusions{}, nil
}
