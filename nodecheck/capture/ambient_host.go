package capture

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
)

// AmbientHost reads istio-cni's node side of ambient capture (nodecheck/ambienthost).
type AmbientHost interface {
	Read(ctx context.Context) (ambienthost.State, error)
}

// HostProof is what was found of an ambient pod's node side, for the debug endpoint.
type HostProof struct {
	State     *ambienthost.State `json:"state,omitempty"`
	NotJudged string             `json:"notJudged,omitempty"`
}

// ambientHostFindings judges an enrolled ambient pod's node side in iptables mode: the probe set
// of each family the pod has an address of must hold it (AmbientProbeSetMissingPod), and the host
// rule that SNATs kubelet's probes must exist (AmbientHostRulesMissing). Without either, kubelet's
// probes of the pod go through ztunnel, which refuses them, and the pod turns unready.
func (c *Check) ambientHostFindings(ctx context.Context, addrs []netip.Addr, native bool) (*HostProof, []nodecheck.Finding) {
	if c.AmbientHost == nil {
		return nil, nil
	}
	if native {
		return &HostProof{NotJudged: "istio-cni runs in native nftables mode: its host probe set is an nftables set, not read here"}, nil
	}
	st, err := c.AmbientHost.Read(ctx)
	if err != nil {
		return &HostProof{NotJudged: err.Error()}, nil
	}
	proof := &HostProof{State: &st}
	var noRule []string
	var missing []map[string]any
	for _, a := range addrs {
		if a.IsLinkLocalUnicast() || a.IsLoopback() {
			continue
		}
		a = a.Unmap()
		fam, set, snat := st.Of(a), ambienthost.SetV4, ambienthost.ProbeSNATv4
		family := "ipv4"
		if !a.Is4() {
			set, snat, family = ambienthost.SetV6, ambienthost.ProbeSNATv6, "ipv6"
			if !fam.SetFound && fam.SNATRule == "" {
				continue // istio-cni's IPv6 support off: it writes neither
			}
		}
		if fam.SNATRule == "" && !slices.Contains(noRule, family) {
			noRule = append(noRule, family)
		}
		if !fam.SetFound || !slices.Contains(fam.Members, a) {
			missing = append(missing, map[string]any{"address": a.String(), "set": set, "setFound": fam.SetFound,
				"members": len(fam.Members), "snatTo": snat})
		}
	}
	var out []nodecheck.Finding
	if len(noRule) > 0 {
		out = append(out, nodecheck.Finding{
			Code:     nodecheck.AmbientHostRulesMissing,
			Severity: nodecheck.SeverityError,
			Message: fmt.Sprintf("istio-cni's host rule that SNATs kubelet's probes to %s (nat %s) is missing on this node (%v): kubelet's probes of ambient pods go through ztunnel and fail",
				ambienthost.ProbeSNATv4, ambienthost.HostChain, noRule),
			Remedy: "The istio-cni node agent writes this rule when it starts, in the node's network namespace. Something removed it " +
				"(a node firewall reload, a CNI that flushes nat POSTROUTING): restart the istio-cni-node pod on this node so that " +
				"it writes its host rules again, and find what flushes them.",
			Evidence:  map[string]any{"families": noRule, "chain": ambienthost.HostChain},
			Component: nodecheck.ComponentIstioCNI,
		})
	}
	if len(missing) > 0 {
		out = append(out, nodecheck.Finding{
			Code:     nodecheck.AmbientProbeSetMissingPod,
			Severity: nodecheck.SeverityError,
			Message: fmt.Sprintf("the pod is enrolled in ambient, but istio-cni's host probe set does not hold its address (%s): kubelet's probes of it are not SNATed to %s and go through ztunnel, which refuses them",
				missing[0]["address"], ambienthost.ProbeSNATv4),
			Remedy: "The istio-cni node agent adds each enrolled pod's addresses to the ipsets istio-inpod-probes-v4/-v6 on the node. " +
				"It lost this pod (a node agent restart while the pod stayed, an ipset flush): restart the istio-cni-node pod so that it " +
				"reconciles the set, or restart the pod; check istio-cni's logs for ipset errors.",
			Evidence:  map[string]any{"missing": missing},
			Component: nodecheck.ComponentIstioCNI,
		})
	}
	return proof, out
}
