package netfilter

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Check is the node check of the netfilter features the capture needs.
type Check struct {
	Reader Reader
}

// Name is the check's name in metrics and reports.
func (c *Check) Name() string { return "netfilter" }

// CheckNode reads the kernel's facts and names what is missing.
func (c *Check) CheckNode(ctx context.Context) (nodecheck.Result, error) {
	inv, err := c.Reader.Read(ctx)
	if err != nil {
		return nodecheck.Result{}, fmt.Errorf("reading the node's netfilter features: %w", err)
	}
	res := nodecheck.Result{Detail: inv}
	if f, ok := Finding(inv); ok {
		res.Findings = []nodecheck.Finding{f}
	}
	return res, nil
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
