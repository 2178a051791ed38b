package nftread

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

func (d *ruleDecoder) tproxyExpr(data []byte) error {
	var fam, addrReg, portReg uint32
	var hasAddr, hasPort bool
	a := attrIter{b: data}
	for a.next() {
		var err error
		switch a.typ {
		case nftaTproxyFamily:
			fam, err = a.u32()
		case nftaTproxyRegAddr:
			addrReg, err = a.u32()
			hasAddr = true
		case nftaTproxyRegPort:
			portReg, err = a.u32()
			hasPort = true
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return a.err
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
