package nftread

import (
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// redir decodes nft's `redirect`: iptables' REDIRECT, its ports from immediate registers.
func (d *ruleDecoder) redir(data []byte) error {
	// NFTA_REDIR_FLAGS (random, persistent) is left out: neither changes where the proxy must
	// listen.
	at := parseAttrs(data)
	minReg, hasMin := at.u32(unix.NFTA_REDIR_REG_PROTO_MIN)
	maxReg, hasMax := at.u32(unix.NFTA_REDIR_REG_PROTO_MAX)
	if at.err != nil {
		return at.err
	}
	if !hasMin {
		d.setTarget(rules.Target{Name: "REDIRECT", Args: rules.RedirectArgs(0, 0)})
		return nil
	}
	if !hasMax {
		maxReg = minReg
	}
	lo, okLo := d.immPort(minReg)
	hi, okHi := d.immPort(maxReg)
	if !okLo || !okHi || hi < lo {
		d.other("redir to registers %d-%d holding %s, %s", minReg, maxReg, d.describeReg(minReg), d.describeReg(maxReg))
		d.setTarget(rules.Target{Name: "REDIRECT", Args: "?"})
		return nil
	}
	d.setTarget(rules.Target{Name: "REDIRECT", Args: rules.RedirectArgs(lo, hi)})
	return nil
}
