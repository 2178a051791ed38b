// Package xt decodes the kernel structures of xtables match and target extensions into the rule model.
//
// Both backends meet the same structures (linux/netfilter/xt_*.h, in host byte order): legacy
// xtables blobs carry them after each entry, and iptables-nft puts what nftables cannot say
// natively into xtables-compat match and target expressions. Decoding them once, here, gives a
// rule one meaning whichever backend it was read from. Every decoder checks the length before it
// reads: a structure from another ABI or a corrupt dump is an error, never a panic.
package xt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// ErrNotDecoded marks an extension, or a revision of one, that this package has no decoder for.
var ErrNotDecoded = errors.New("not decoded")

// ne is the byte order of the structures except addresses and NAT/TPROXY ports, which are in
// network order.
var ne = binary.NativeEndian

func need(info []byte, n int) error {
	if len(info) < n {
		return fmt.Errorf("info of %d bytes, want at least %d", len(info), n)
	}
	return nil
}

// revisionAndSize checks an extension that has a single revision with a structure of size bytes.
func revisionAndSize(rev, want uint32, info []byte, size int) error {
	if rev != want {
		return ErrNotDecoded
	}
	return need(info, size)
}

// errFamily is the error of a structure whose layout depends on an IP family, in a table of
// neither.
func errFamily(f rules.Family) error {
	return fmt.Errorf("in a table of family %d", uint8(f))
}

// bang is the "! " that precedes an inverted option inside a MatchOther value, where ParseSave
// keeps it too.
func bang(not bool) string {
	if not {
		return "! "
	}
	return ""
}

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

// cString returns the NUL-terminated string at the start of b.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
