package nftread

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/xt"
)

// iptables-nft puts what it cannot express natively into xtables-compat `match` and `target`
// expressions: the extension's name, revision, and its kernel struct as raw bytes in host byte
// order (NFTA_MATCH_INFO / NFTA_TARGET_INFO), the structs legacy xtables holds too; package xt
// decodes them for both backends.

// errNotDecoded marks an extension (or revision) that has no decoder.
var errNotDecoded = xt.ErrNotDecoded

// xt decodes a `match` or `target` expression.
func (d *ruleDecoder) xt(data []byte, isTarget bool) error {
	// NFTA_MATCH_* and NFTA_TARGET_* share their numbers (name 1, rev 2, info 3).
	at := parseAttrs(data)
	name := at.str(unix.NFTA_MATCH_NAME)
	rev, _ := at.u32(unix.NFTA_MATCH_REV)
	info := at.bytes(unix.NFTA_MATCH_INFO)
	if at.err != nil {
		return at.err
	}
	if isTarget {
		t, tp, err := decodeXTTarget(d.ctx.family, name, rev, info)
		if err != nil {
			d.other("-j %s (revision %d, %v) %s", name, rev, xtCause(err), shortHex(bytes.TrimRight(info, "\x00")))
			d.opaque = true
			d.setTarget(rules.Target{Name: "?" + name})
			return nil
		}
		if tp != nil {
			if d.hasTarget {
				d.other("then -j TPROXY")
				return nil
			}
			d.out.tproxy = tp
		}
		d.setTarget(t)
		return nil
	}
	ms, err := decodeXTMatch(d.ctx.family, name, rev, info)
	if err != nil {
		d.other("-m %s (revision %d, %v) %s", name, rev, xtCause(err), shortHex(bytes.TrimRight(info, "\x00")))
		d.opaque = true
		return nil
	}
	d.out.rule.Matches = append(d.out.rule.Matches, ms...)
	return nil
}

// xtFamily is the model's family of a table, which the xt structures of addresses depend on; 0
// for a table of neither IP family.
func xtFamily(family uint8) rules.Family {
	switch family {
	case unix.NFPROTO_IPV4:
		return rules.IPv4
	case unix.NFPROTO_IPV6:
		return rules.IPv6
	}
	return 0
}

// decodeXTMatch decodes the info of an xtables-compat match into the Matches it stands for.
func decodeXTMatch(family uint8, name string, rev uint32, info []byte) ([]rules.Match, error) {
	switch name {
	case "tcp", "udp", "conntrack":
		// iptables-nft writes these only in ip and ip6 tables.
		if family != unix.NFPROTO_IPV4 && family != unix.NFPROTO_IPV6 {
			return nil, fmt.Errorf("in a table of family %s", familyName(family))
		}
	}
	return xt.Match(xtFamily(family), name, rev, info)
}

// decodeXTTarget decodes the info of an xtables-compat target. For TPROXY it also returns the
// options, which are rendered per family.
func decodeXTTarget(family uint8, name string, rev uint32, info []byte) (rules.Target, *tproxyTarget, error) {
	if name == "TPROXY" {
		tp, err := xt.TProxy(xtFamily(family), rev, info)
		if err != nil {
			return rules.Target{}, nil, err
		}
		return rules.Target{Name: "TPROXY"}, &tproxyTarget{port: tp.Port, addr: tp.Addr, mark: tp.Mark, mask: tp.Mask, markSet: true}, nil
	}
	t, err := xt.Target(xtFamily(family), name, rev, info)
	return t, nil, err
}

// xtCause is what was wrong with an extension's structure, without the extension and revision
// that the evidence names itself.
func xtCause(err error) error {
	if cause := errors.Unwrap(err); cause != nil {
		return cause
	}
	return err
}
