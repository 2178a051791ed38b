package capture

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
)

// AmbientHost reads istio-cni's node side of ambient capture (nodecheck/ambienthost).
type AmbientHost interface {
	Read(ctx context.Context) (ambienthost.State, error)
}

// HostProof is what was found of an ambient pod's node side, for the debug endpoint.
type HostProof struct {
	State *ambienthost.State `json:"state,omitempty"`
	// Form is the form of istio-cni's node side judged: "iptables" or "nftables".
	Form string `json:"form,omitempty"`
	// Why says how Form was chosen, or why nothing was judged.
	Why       string `json:"why,omitempty"`
	NotJudged string `json:"notJudged,omitempty"`
}

// hostForm is what a finding names of one form of istio-cni's node side.
type hostForm struct {
	name     string // "iptables", "nftables"
	rule     string // where the host rule is: "nat ISTIO_POSTRT"
	sets     string // the probe sets, for the remedy
	evidence map[string]any
}

var (
	iptablesForm = hostForm{name: "iptables", rule: "nat " + ambienthost.HostChain,
		sets: "the ipsets " + ambienthost.SetV4 + "/-v6", evidence: map[string]any{"chain": ambienthost.HostChain}}
	nftablesForm = hostForm{name: "nftables", rule: ambienthost.NftTable + " chain " + ambienthost.NftChain,
		sets:     "the sets " + ambienthost.SetV4 + "/-v6 of table " + ambienthost.NftTable,
		evidence: map[string]any{"table": ambienthost.NftTable, "chain": ambienthost.NftChain}}
)

// ambientHostFindings judges an enrolled ambient pod's node side: the probe set of each family the
// pod has an IP of must hold it (AmbientProbeSetMissingPod; the pod's IPs, not every address of its
// netns, see probedAddrs), and the host rule that SNATs
// kubelet's probes must exist (AmbientHostRulesMissing). Without either, kubelet's probes of the
// pod go through ztunnel, which refuses them, and the pod turns unready.
//
// istio-cni writes its node side in one form, iptables or native nftables, as its NATIVE_NFTABLES
// setting says; the form judged is the one found on the node. With neither found, the pod's own
// in-pod rules tell the setting (native says whether they are native nftables): the agent writes
// both with it. With both found (leftovers of a switch of the setting), a pod that either covers is
// fine, and one that neither covers is not judged: which form the agent keeps is not known.
func (c *Check) ambientHostFindings(ctx context.Context, addrs probeAddrs, native bool) (*HostProof, []nodecheck.Finding) {
	if c.AmbientHost == nil {
		return nil, nil
	}
	st, err := c.AmbientHost.Read(ctx)
	if err != nil {
		return &HostProof{NotJudged: err.Error()}, nil
	}
	proof := &HostProof{State: &st}
	switch {
	case st.IPTables.Found && st.Nftables.Found:
		either := func(a netip.Addr) bool { return st.IPTables.Of(a).Covers(a) || st.Nftables.Of(a).Covers(a) }
		if miss := addrs.uncovered(either); len(miss) > 0 {
			proof.NotJudged = fmt.Sprintf("istio-cni's node side exists in both forms (iptables: ipsets and nat %s; nftables: table %s), "+
				"as a switch of its native nftables setting leaves them, and neither SNATs kubelet's probes to %s: which one the agent keeps is not known",
				ambienthost.HostChain, ambienthost.NftTable, miss[0])
			return proof, nil
		}
		proof.Why = "both forms exist (a switch of istio-cni's native nftables setting leaves them); one of them SNATs kubelet's probes to each of the pod's addresses"
		return proof, nil
	case st.Nftables.Found:
		proof.Form, proof.Why = "nftables", "istio-cni's table "+ambienthost.NftTable+" exists on the node, and no ipset or host rule of iptables mode"
		return proof, judgeSide(st.Nftables, nftablesForm, addrs)
	case st.IPTables.Found:
		proof.Form, proof.Why = "iptables", "istio-cni's ipsets or nat "+ambienthost.HostChain+" rule exist on the node, and no table "+ambienthost.NftTable
		return proof, judgeSide(st.IPTables, iptablesForm, addrs)
	case native:
		proof.Form, proof.Why = "nftables", "neither form exists on the node; the pod's in-pod rules are native nftables, which istio-cni writes with its host side in the same form"
		return proof, judgeSide(st.Nftables, nftablesForm, addrs)
	default:
		proof.Form, proof.Why = "iptables", "neither form exists on the node; the pod's in-pod rules are iptables rules, which istio-cni writes with its host side in the same form"
		return proof, judgeSide(st.IPTables, iptablesForm, addrs)
	}
}

// probedAddrs are the addresses of the pod that istio-cni puts in the host probe sets: the pod's
// IPs as the runtime reports them (istio-cni takes them from the pod's primary network, never
// from an interface multus or another meta-plugin adds, such as a net1 on a storage network).
// Those that do not parse are left out; the netns check already names a bad primary IP.
// Without the runtime's IPs (a bare --netns), which of the namespace's addresses are the pod's
// is not known: then each family's addresses are one alternative set (see judgeSide).
func probedAddrs(t nodecheck.Target, netnsAddrs []netip.Addr) probeAddrs {
	ips := t.IPs
	if len(ips) == 0 && t.IP != "" {
		ips = []string{t.IP}
	}
	var runtime []netip.Addr
	for _, s := range ips {
		if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil && !slices.Contains(runtime, a.Unmap()) {
			runtime = append(runtime, a.Unmap())
		}
	}
	if len(runtime) > 0 {
		return probeAddrs{addrs: probed(runtime), fromRuntime: true}
	}
	return probeAddrs{addrs: probed(netnsAddrs)}
}

// probeAddrs are the addresses judged against the probe sets. When fromRuntime is false they are
// every address of the pod's netns, and a family is covered when the set holds any one of them:
// an extra interface's address is not expected in it.
type probeAddrs struct {
	addrs       []netip.Addr
	fromRuntime bool
}

// probed are the pod's addresses kubelet probes: not link-local or loopback ones.
func probed(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if !a.IsLinkLocalUnicast() && !a.IsLoopback() {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// uncovered are the addresses the node side should cover and does not, covered saying which it
// does. With the runtime's IPs every one of them counts; with only the netns's addresses, a family
// counts once (its first address, in the kernel's order) and only when none of its addresses is
// covered.
func (p probeAddrs) uncovered(covered func(netip.Addr) bool) []netip.Addr {
	var out []netip.Addr
	if p.fromRuntime {
		for _, a := range p.addrs {
			if !covered(a) {
				out = append(out, a)
			}
		}
		return out
	}
	for _, is4 := range []bool{true, false} {
		var first netip.Addr
		held := false
		for _, a := range p.addrs {
			if a.Is4() != is4 {
				continue
			}
			if !first.IsValid() {
				first = a
			}
			held = held || covered(a)
		}
		if first.IsValid() && !held {
			out = append(out, first)
		}
	}
	return out
}

// judgeSide judges the pod's addresses against one form of the node side.
func judgeSide(side ambienthost.Side, form hostForm, p probeAddrs) []nodecheck.Finding {
	if form.name == "nftables" && !side.Found {
		// The table holds both the rule and the sets: one finding says it all.
		return []nodecheck.Finding{hostRulesMissing(form, []string{"ipv4", "ipv6"}, fmt.Sprintf(
			"istio-cni's host table %s, which holds the rule that SNATs kubelet's probes to %s and the probe sets, is missing on this node: kubelet's probes of ambient pods go through ztunnel and fail",
			ambienthost.NftTable, ambienthost.ProbeSNATv4))}
	}
	var noRule []string
	judged := probeAddrs{fromRuntime: p.fromRuntime}
	for _, a := range p.addrs {
		fam, family := side.Of(a), "ipv4"
		if !a.Is4() {
			family = "ipv6"
			if !fam.SetFound && fam.SNATRule == "" {
				continue // istio-cni's IPv6 support off: it writes neither
			}
		}
		judged.addrs = append(judged.addrs, a)
		if fam.SNATRule == "" && !slices.Contains(noRule, family) {
			noRule = append(noRule, family)
		}
	}
	var missing []map[string]any
	for _, a := range judged.uncovered(func(a netip.Addr) bool { fam := side.Of(a); return fam.SetFound && slices.Contains(fam.Members, a) }) {
		fam, snat := side.Of(a), ambienthost.ProbeSNATv4
		if !a.Is4() {
			snat = ambienthost.ProbeSNATv6
		}
		m := map[string]any{"address": a.String(), "set": fam.Set, "setFound": fam.SetFound, "members": len(fam.Members), "snatTo": snat}
		if !p.fromRuntime {
			m["addressFrom"] = "netns" // no runtime IP: none of the namespace's addresses of this family is in the set
		}
		missing = append(missing, m)
	}
	var out []nodecheck.Finding
	if len(noRule) > 0 {
		out = append(out, hostRulesMissing(form, noRule, fmt.Sprintf(
			"istio-cni's host rule that SNATs kubelet's probes to %s (%s) is missing on this node (%v): kubelet's probes of ambient pods go through ztunnel and fail",
			ambienthost.ProbeSNATv4, form.rule, noRule)))
	}
	if len(missing) > 0 {
		out = append(out, nodecheck.Finding{
			Code:     nodecheck.AmbientProbeSetMissingPod,
			Severity: nodecheck.SeverityError,
			Message: fmt.Sprintf("the pod is enrolled in ambient, but istio-cni's host probe set (%s) does not hold its address (%s): kubelet's probes of it are not SNATed to %s and go through ztunnel, which refuses them",
				missing[0]["set"], missing[0]["address"], ambienthost.ProbeSNATv4),
			Remedy: "The istio-cni node agent adds each enrolled pod's addresses to " + form.sets + " on the node. " +
				"It lost this pod (a node agent restart while the pod stayed, a set flush): restart the istio-cni-node pod so that it " +
				"reconciles the set, or restart the pod; check istio-cni's logs for " + form.name + " set errors.",
			Evidence:  map[string]any{"missing": missing, "form": form.name},
			Component: nodecheck.ComponentIstioCNI,
		})
	}
	return out
}

func hostRulesMissing(form hostForm, families []string, msg string) nodecheck.Finding {
	ev := map[string]any{"families": families, "form": form.name}
	for k, v := range form.evidence {
		ev[k] = v
	}
	return nodecheck.Finding{
		Code:     nodecheck.AmbientHostRulesMissing,
		Severity: nodecheck.SeverityError,
		Message:  msg,
		Remedy: "The istio-cni node agent writes its host rules when it starts, in the node's network namespace (" + form.rule + "). " +
			"Something removed them (a node firewall reload, a CNI or `nft flush ruleset` that flushes nat postrouting): restart the " +
			"istio-cni-node pod on this node so that it writes its host rules again, and find what flushes them.",
		Evidence:  ev,
		Component: nodecheck.ComponentIstioCNI,
	}
}
