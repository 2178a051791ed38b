package capture

import (
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Ambient mode's in-pod capture as istio-cni writes it with native nftables (istio.io/istio
// cni/pkg/nftables, the node agent's NativeNftables setting): three inet tables standing for the
// iptables tables of the iptables writer, istio-ambient-nat, istio-ambient-mangle and
// istio-ambient-raw, each with base chains prerouting and output that jump to the user chains
// istio-prerouting and istio-output. Read by nftread they are the nat, mangle and raw tables of the
// native-nftables backend, in both families, with the chains PREROUTING, OUTPUT,
// ISTIO_PREROUTING and ISTIO_OUTPUT, and the rules are the iptables writer's, rule for rule:
// the inet tables hold the IPv4 and IPv6 rules side by side, and a rule without an address
// (the DNS UDP redirect, the mark rules, the conntrack zones) belongs to both families, as its
// iptables twin is written in both iptables and ip6tables. The policy routing (fwmark
// 0x111/0xfff lookup 100) is written by the same netlink code for both writers.
const (
	nativeAmbientTablePrefix  = "inet istio-ambient-"
	chainAmbientNftPrerouting = "ISTIO_PREROUTING"
)

// BuildAmbientNftExpected returns the in-pod rules istio-cni's native nftables writer produces
// for cfg in one family, as nftread reads them (none when enabled is false).
func BuildAmbientNftExpected(cfg intent.AmbientConfig, family rules.Family, enabled bool) *Expected {
	return buildAmbient(cfg, family, enabled, chainAmbientNftPrerouting)
}

// nativeAmbient reports whether the namespace holds istio-cni's native ambient tables (empty
// ones included: a flushed table still says which writer the pod had).
func nativeAmbient(sets []*rules.RuleSet) bool {
	for _, s := range sets {
		if s.Backend != rules.BackendNative {
			continue
		}
		for _, t := range s.Tables {
			if strings.HasPrefix(t.Origin, nativeAmbientTablePrefix) {
				return true
			}
		}
	}
	return false
}
