package nftread

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

func hostU32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// istio-cni's native ambient writer sets the connmark of connections from ztunnel with
// `ct mark set ct mark & 0xfffff000 | 0x111`: the kernel holds it as a ct load, an and-xor
// bitwise and a ct store, which is what iptables' `CONNMARK --set-xmark 0x111/0xfff` does.
func TestDecodeCtMarkSetXmark(t *testing.T) {
	value := func(b []byte) []byte { return nla(unix.NFTA_DATA_VALUE, b) }
	exprs := append(append(
		expr("ct", nla(unix.NFTA_CT_KEY, be32(unix.NFT_CT_MARK)), nla(unix.NFTA_CT_DREG, be32(unix.NFT_REG_1))),
		expr("bitwise", nla(unix.NFTA_BITWISE_SREG, be32(unix.NFT_REG_1)), nla(unix.NFTA_BITWISE_DREG, be32(unix.NFT_REG_1)),
			nla(unix.NFTA_BITWISE_LEN, be32(4)),
			nla(unix.NFTA_BITWISE_MASK, value(hostU32(0xfffff000))), nla(unix.NFTA_BITWISE_XOR, value(hostU32(0x111))))...),
		expr("ct", nla(unix.NFTA_CT_KEY, be32(unix.NFT_CT_MARK)), nla(unix.NFTA_CT_SREG, be32(unix.NFT_REG_1)))...)
	d, err := decodeRule(ruleContextFor(unix.NFPROTO_INET, "istio-ambient-mangle"), exprs)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.rule.Spec(), "-j CONNMARK --set-xmark 0x111/0xfff"; got != want {
		t.Errorf("decoded %q, want %q", got, want)
	}
}
