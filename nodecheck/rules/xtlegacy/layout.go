package xtlegacy

import (
	"encoding/binary"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// The kernel hands out its tables as the very structs it keeps them in (linux/netfilter/x_tables.h,
// netfilter_ipv4/ip_tables.h, netfilter_ipv6/ip6_tables.h): native byte order, C layout of a
// 64-bit Linux ABI. The offsets below were checked against the uapi headers with offsetof().

// hookCount is NF_INET_NUMHOOKS.
const hookCount = 5

// hookNames are the builtin chains by hook number (NF_INET_PRE_ROUTING…NF_INET_POST_ROUTING).
var hookNames = [hookCount]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

const (
	// xtAlign is XT_ALIGN: matches, targets and entries are padded to the alignment of a u64.
	xtAlign = 8

	tableNameLen = 32 // XT_TABLE_MAXNAMELEN
	extNameLen   = 29 // XT_EXTENSION_MAXNAMELEN: match and target names
	errorNameLen = 30 // XT_FUNCTION_MAXNAMELEN: a user chain's name in its ERROR head

	// infoSize is sizeof(struct ipt_getinfo) == sizeof(struct ip6t_getinfo): name, valid_hooks,
	// hook_entry[5], underflow[5], num_entries, size.
	infoSize = tableNameLen + 4 + 4*hookCount + 4*hookCount + 4 + 4
	// getEntriesHeaderSize is sizeof(struct ipt_get_entries) without its entries: name, size,
	// and padding up to the 8-byte alignment of the entries' counters.
	getEntriesHeaderSize = 40

	// extHeaderSize is sizeof(struct xt_entry_match) == sizeof(struct xt_entry_target):
	// u16 size, char name[29], u8 revision.
	extHeaderSize = 32
	// standardTargetSize is XT_ALIGN(sizeof(struct xt_standard_target)): header + int verdict.
	standardTargetSize = 40

	standardTargetName = "" // XT_STANDARD_TARGET
	errorTargetName    = "ERROR"
)

// Standard verdicts: a negative verdict is -NF_x-1, XT_RETURN is -NF_REPEAT-1; a verdict >= 0 is
// the byte offset of the entry to continue at (a jump, or the next entry for a rule without -j).
const (
	verdictDrop   = -1 // NF_DROP
	verdictAccept = -2 // NF_ACCEPT
	verdictQueue  = -4 // NF_QUEUE
	verdictReturn = -5 // XT_RETURN
)

// entryLayout is where the fields of struct ipt_entry / ip6t_entry sit.
type entryLayout struct {
	size          int // sizeof(struct ipt_entry): where the first match starts
	addrLen       int
	src, dst      int
	srcMask       int
	dstMask       int
	inIface       int
	outIface      int
	inIfaceMask   int
	outIfaceMask  int
	proto         int
	tos           int // ip6t only; -1 for IPv4
	flags         int
	invFlags      int
	targetOffset  int
	nextOffset    int
	flagGoto      uint8 // IPT_F_GOTO / IP6T_F_GOTO
	flagFrag      uint8 // IPT_F_FRAG; 0 for IPv6, which has no -f
	flagProto     uint8 // IP6T_F_PROTO: ip6t only looks at proto when set; 0 for IPv4
	flagTOS       uint8 // IP6T_F_TOS
	socketFamily  int
	optLevel      int
	moduleName    string // what the tables list file and the origin call it
	namesFileName string
}

const (
	// Inversion flags, identical for IPv4 and IPv6 (IPT_INV_*, IP6T_INV_*).
	invViaIn  = 0x01
	invViaOut = 0x02
	invSrcIP  = 0x08
	invDstIP  = 0x10
	invFrag   = 0x20
	invProto  = 0x40
)

const ifNameSize = 16 // IFNAMSIZ

var ipv4Layout = entryLayout{
	size: 112, addrLen: 4,
	src: 0, dst: 4, srcMask: 8, dstMask: 12,
	inIface: 16, outIface: 32, inIfaceMask: 48, outIfaceMask: 64,
	proto: 80, tos: -1, flags: 82, invFlags: 83,
	targetOffset: 88, nextOffset: 90,
	flagGoto: 0x02, flagFrag: 0x01,
	socketFamily: 2, optLevel: 0, // AF_INET, SOL_IP
	moduleName: "ip_tables", namesFileName: "ip_tables_names",
}

var ipv6Layout = entryLayout{
	size: 168, addrLen: 16,
	src: 0, dst: 16, srcMask: 32, dstMask: 48,
	inIface: 64, outIface: 80, inIfaceMask: 96, outIfaceMask: 112,
	proto: 128, tos: 130, flags: 131, invFlags: 132,
	targetOffset: 140, nextOffset: 142,
	flagGoto: 0x04, flagProto: 0x01, flagTOS: 0x02,
	socketFamily: 10, optLevel: 41, // AF_INET6, IPPROTO_IPV6
	moduleName: "ip6_tables", namesFileName: "ip6_tables_names",
}

func layoutFor(f rules.Family) (*entryLayout, bool) {
	switch f {
	case rules.IPv4:
		return &ipv4Layout, true
	case rules.IPv6:
		return &ipv6Layout, true
	}
	return nil, false
}

// ne is the byte order of everything the kernel returns except addresses and NAT/TPROXY ports,
// which are in network order.
var ne = binary.NativeEndian

// cString returns the NUL-terminated string at the start of b.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
