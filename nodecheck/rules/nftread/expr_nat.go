package nftread

import (
	"fmt"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// nat decodes nft's `snat to ADDR[:PORT]` and `dnat to …`: iptables' SNAT and DNAT, spelled as
// iptables-save does (`--to-source 169.254.7.127`), their addresses and ports from immediate
// registers. istio-cni's native host rule SNATs kubelet's probes this way.
func (d *ruleDecoder) nat(data []byte) error {
	at := parseAttrs(data)
	typ, _ := at.u32(unix.NFTA_NAT_TYPE)
	addrMin, hasAddr := at.u32(unix.NFTA_NAT_REG_ADDR_MIN)
	addrMax, hasAddrMax := at.u32(unix.NFTA_NAT_REG_ADDR_MAX)
	protoMin, hasProto := at.u32(unix.NFTA_NAT_REG_PROTO_MIN)
	protoMax, hasProtoMax := at.u32(unix.NFTA_NAT_REG_PROTO_MAX)
	flags, _ := at.u32(unix.NFTA_NAT_FLAGS)
	if at.err != nil {
		return at.err
	}
	name, opt := "SNAT", "--to-source"
	switch typ {
	case unix.NFT_NAT_SNAT:
	case unix.NFT_NAT_DNAT:
		name, opt = "DNAT", "--to-destination"
	default:
		d.other("nft nat type %d", typ)
		d.setTarget(rules.Target{Name: "?nat"})
		return nil
	}
	if !hasAddrMax {
		addrMax = addrMin
	}
	if !hasProtoMax {
		protoMax = protoMin
	}
	var to string
	if hasAddr {
		lo, okLo := d.immAddr(addrMin)
		hi, okHi := d.immAddr(addrMax)
		if !okLo || !okHi {
			d.other("nat to registers %d-%d holding %s, %s", addrMin, addrMax, d.describeReg(addrMin), d.describeReg(addrMax))
			d.setTarget(rules.Target{Name: name, Args: opt + " ?"})
			return nil
		}
		to = lo.String()
		if hi != lo {
			to += "-" + hi.String()
		}
		if hasProto && lo.Is6() {
			to = "[" + to + "]"
		}
	}
	if hasProto {
		lo, okLo := d.immPort(protoMin)
		hi, okHi := d.immPort(protoMax)
		if !okLo || !okHi {
			d.other("nat to ports in registers %d-%d holding %s, %s", protoMin, protoMax, d.describeReg(protoMin), d.describeReg(protoMax))
			d.setTarget(rules.Target{Name: name, Args: opt + " ?"})
			return nil
		}
		to += ":" + strconv.Itoa(int(lo))
		if hi != lo {
			to += "-" + strconv.Itoa(int(hi))
		}
	}
	args := opt + " " + to
	// The range flags (random, persistent, fully-random) change which address or port is
	// picked, not where to: kept visible rather than spelled.
	if flags&^(unix.NF_NAT_RANGE_MAP_IPS|unix.NF_NAT_RANGE_PROTO_SPECIFIED) != 0 {
		args += fmt.Sprintf(" ?flags=%#x", flags)
	}
	d.setTarget(rules.Target{Name: name, Args: args})
	return nil
}

// immAddr reads an address an immediate expression put in a register.
func (d *ruleDecoder) immAddr(n uint32) (netip.Addr, bool) {
	if n >= numRegisters {
		return netip.Addr{}, false
	}
	r := d.regs[n]
	if r.kind != regImm || (len(r.data) != 4 && len(r.data) != 16) {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(r.data)
	return a, ok
}
