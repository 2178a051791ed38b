package capture

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/netfilter"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// KernelFeatures tells the netfilter features the node's kernel lacks (nodecheck/netfilter.Reader).
type KernelFeatures interface {
	Read(ctx context.Context) (netfilter.Inventory, error)
}

// captureKinds are the netfilter kinds of capture a pod's rules are written as: all of needs
// apply, and one of oneOf does when the writer's backend is not known.
type captureKinds struct{ needs, oneOf []string }

// sidecarKinds: istio-init writes iptables in the node's backend (either, when unknown), or
// Istio's own nftables; TPROXY adds its mangle rules.
func sidecarKinds(cfg intent.Config, node rules.Backend) captureKinds {
	if cfg.NativeNftables {
		return captureKinds{needs: []string{netfilter.SidecarNative}}
	}
	k := captureKinds{oneOf: []string{netfilter.SidecarLegacy, netfilter.SidecarNft}}
	switch node {
	case rules.BackendLegacy:
		k.oneOf = []string{netfilter.SidecarLegacy}
	case rules.BackendNft:
		k.oneOf = []string{netfilter.SidecarNft}
	}
	if cfg.Mode == istiopod.ModeTProxy {
		k.needs = []string{netfilter.SidecarTProxy}
	}
	return k
}

// ambientKinds: istio-cni writes iptables or native nftables, which its rules do not say once gone.
var ambientKinds = captureKinds{oneOf: []string{netfilter.AmbientIptable, netfilter.AmbientNative}}

// blames says whether a missing feature explains a capture of these kinds: one it needs, or
// one every alternative needs.
func (k captureKinds) blames(f netfilter.Feature) bool {
	if slices.ContainsFunc(k.needs, func(n string) bool { return slices.Contains(f.NeededBy, n) }) {
		return true
	}
	return len(k.oneOf) > 0 && !slices.ContainsFunc(k.oneOf, func(n string) bool { return !slices.Contains(f.NeededBy, n) })
}

// kernelCause is NetfilterFeatureMissing for a pod whose rules are missing or incomplete when the
// node's kernel lacks a feature its kind of capture needs: the root cause the writer's error
// hides. It says nothing when the rules are there or the kernel cannot be read.
func (c *Check) kernelCause(ctx context.Context, kinds captureKinds, findings []nodecheck.Finding) (nodecheck.Finding, bool) {
	if c.Kernel == nil || !slices.ContainsFunc(findings, func(f nodecheck.Finding) bool {
		return f.Code == nodecheck.RedirectRulesMissing || f.Code == nodecheck.RedirectRulesIncomplete
	}) {
		return nodecheck.Finding{}, false
	}
	inv, err := c.Kernel.Read(ctx)
	if err != nil {
		return nodecheck.Finding{}, false
	}
	var blamed []netfilter.Feature
	var names []string
	for _, f := range inv.Missing {
		if kinds.blames(f) {
			blamed = append(blamed, f)
			names = append(names, f.Name)
		}
	}
	if len(blamed) == 0 {
		return nodecheck.Finding{}, false
	}
	node, _ := netfilter.Finding(netfilter.Inventory{Source: inv.Source, Missing: blamed})
	return nodecheck.Finding{
		Code:     nodecheck.NetfilterFeatureMissing,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("the pod's capture rules cannot be written on this node: its kernel lacks %s, which this pod's kind of capture needs",
			strings.Join(names, ", ")),
		Remedy:   node.Remedy,
		Evidence: map[string]any{"missing": blamed, "source": inv.Source, "kinds": append(slices.Clone(kinds.needs), kinds.oneOf...)},
	}, true
}
