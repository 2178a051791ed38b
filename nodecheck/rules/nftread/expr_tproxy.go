package nftread

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// tproxyExpr decodes nft's `tproxy`: iptables' TPROXY, its address and port from immediate
// registers and its mark from a `meta mark set` after it.
func (d *ruleDecoder) tproxyExpr(data []byte) error {
	at := parseAttrs(data)
	fam, _ := at.u32(nftaTproxyFamily)
	addrReg, hasAddr := at.u32(nftaTproxyRegAddr)
	portReg, hasPort := at.u32(nftaTproxyRegPort)
	if at.err != nil {
		return at.err
	}
	switch fam {
	case unix.NFPROTO_IPV4:
		d.restrict(rules.IPv4)
	case unix.NFPROTO_IPV6:
		d.restrict(rules.IPv6)
	}
	t := &tproxyTarget{}
	ok := true
	if hasPort {
		t.port, ok = d.immPort(portReg)
	}
	if hasAddr && ok {
		r := d.regs[0]
		if addrReg < numRegisters {
			r = d.regs[addrReg]
		}
		addr, valid := netip.AddrFromSlice(r.data)
		ok = r.kind == regImm && valid
		t.addr = addr
	}
	if !ok {
		d.other("tproxy from registers addr %d port %d", addrReg, portReg)
		d.setTarget(rules.Target{Name: "?tproxy"})
		return nil
	}
	if d.hasTarget {
		d.other("then tproxy")
		return nil
	}
	d.out.tproxy = t
	d.setTarget(rules.Target{Name: "TPROXY"})
	return nil
}
