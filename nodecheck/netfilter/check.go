package netfilter

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Check is the node check of the netfilter features the capture needs, and of the node's own nft
// where istio-cni's native nftables mode makes its version matter.
type Check struct {
	Reader Reader
	// HostRoot is where the node's nft is looked for; empty skips it.
	HostRoot string
	// AmbientHost tells whether istio-cni's native host table is in the node's netns; nil never
	// says NodeNftTooOld.
	AmbientHost AmbientHost
}

// Detail is what the check read, for the debug page.
type Detail struct {
	Inventory
	// HostNft is the node's nft, whether or not its version matters.
	HostNft *HostNft `json:"hostNft,omitempty"`
}

// Name is the check's name in metrics and reports.
func (c *Check) Name() string { return "netfilter" }

// CheckNode reads the kernel's facts and names what is missing.
func (c *Check) CheckNode(ctx context.Context) (nodecheck.Result, error) {
	inv, err := c.Reader.Read(ctx)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading the node's netfilter features: %w", err)
	}
	detail := Detail{Inventory: inv}
	var findings []nodecheck.Finding
	if f, ok := Finding(inv); ok {
		findings = append(findings, f)
	}
	if c.HostRoot != "" {
		h := ReadHostNft(c.HostRoot)
		if f, ok := judgeHostNft(ctx, &h, c.AmbientHost); ok {
			findings = append(findings, f)
		}
		detail.HostNft = &h
	}
	return nodecheck.Result{Findings: findings, Detail: detail}, nil
}

// Finding is NetfilterFeatureMissing for an inventory with something missing: an error when what
// is missing breaks every sidecar pod istio-init writes iptables rules for (both iptables
// backends need it), a warning when only some kinds of capture need it.
func Finding(inv Inventory) (nodecheck.Finding, bool) {
	if len(inv.Missing) == 0 {
		return nodecheck.Finding{}, false
	}
	sev := nodecheck.SeverityWarning
	var names, kinds []string
	for _, f := range inv.Missing {
		names = append(names, f.Name)
		for _, k := range f.NeededBy {
			if !slices.Contains(kinds, k) {
				kinds = append(kinds, k)
			}
		}
		if slices.Contains(f.NeededBy, SidecarLegacy) && slices.Contains(f.NeededBy, SidecarNft) {
			sev = nodecheck.SeverityError
		}
	}
	slices.Sort(kinds)
	return nodecheck.Finding{
		Code:     nodecheck.NetfilterFeatureMissing,
		Severity: sev,
		Message: fmt.Sprintf("the node's kernel lacks netfilter features Istio's capture needs: %s; pods captured as %s cannot get their rules",
			strings.Join(names, ", "), strings.Join(kinds, "; ")),
		Remedy: "istio-init and istio-cni fail to write rules the kernel has no support for (iptables-restore: \"Couldn't load " +
			"target\" / \"Extension ... revision 0 not supported\"; nft: \"Could not process rule: No such file or directory\"). " +
			"Use a node image whose kernel has them (built in or as modules under /lib/modules), or load the modules at boot " +
			"(modules-load.d) where they are installed but not loaded automatically; Istio's platform prerequisites list them. " +
			"Then restart the pods that started without their capture.",
		Evidence: map[string]any{"missing": inv.Missing, "source": inv.Source},
	}, true
}
