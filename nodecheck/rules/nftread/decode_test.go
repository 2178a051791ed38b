package nftread

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

var update = flag.Bool("update", false, "TestDecodeRuleTable rewrites testdata/rules.txt from the stored snapshots")

const ruleTableFile = "testdata/rules.txt"

// ruleTableScenarios are the snapshots whose rules make up testdata/rules.txt: together they
// hold every expression the decoder knows, as iptables-nft, nft and Istio wrote them.
var ruleTableScenarios = []string{"sidecar-tproxy", "sidecar-custom", "native-tproxy", "native-custom", "features-iptables", "features-iptables-extra", "features-native"}

// ruleRow is one captured rule: its table, the NFTA_RULE_EXPRESSIONS bytes the kernel sent,
// and what the rule is in each family it belongs to.
type ruleRow struct {
	family uint8
	table  string
	chain  string
	exprs  []byte
	want   map[rules.Family]string // "-" where the rule is not part of that family
}

func ruleContextFor(family uint8, table string) *ruleContext {
	chainName := func(s string) string { return s }
	if classifyTable(tableID{family, table}) == tableNative {
		chainName = nativeChainName
	}
	return &ruleContext{family: family, chainName: chainName, set: func(string) *setInfo { return nil }}
}

func (r ruleRow) decode() (map[rules.Family]string, error) {
	d, err := decodeRule(ruleContextFor(r.family, r.table), r.exprs)
	if err != nil {
		return nil, err
	}
	got := map[rules.Family]string{}
	for _, f := range tableFamilies(r.family) {
		if r.family == unix.NFPROTO_INET && d.only != 0 && d.only != f {
			got[f] = "-"
			continue
		}
		got[f] = d.forFamily(f).Spec()
	}
	return got, nil
}

// TestDecodeRuleTable decodes, rule by rule, expressions captured from the kernel, each
// stored next to its meaning in testdata/rules.txt (rules whose meaning needs a set's
// elements are left to TestDecodeSnapshots).
func TestDecodeRuleTable(t *testing.T) {
	if *update {
		writeRuleTable(t)
	}
	rows := readRuleTable(t)
	if len(rows) < 50 {
		t.Fatalf("only %d rows in %s", len(rows), ruleTableFile)
	}
	for i, r := range rows {
		got, err := r.decode()
		if err != nil {
			t.Errorf("row %d (%s %s %s): %v", i, familyName(r.family), r.table, r.chain, err)
			continue
		}
		for f, want := range r.want {
			if got[f] != want {
				t.Errorf("row %d (%s %s %s) %s:\n got %s\nwant %s", i, familyName(r.family), r.table, r.chain, f, got[f], want)
			}
		}
		if len(got) != len(r.want) {
			t.Errorf("row %d: decoded for %d families, want %d", i, len(got), len(r.want))
		}
	}
}

func writeRuleTable(t *testing.T) {
	var b strings.Builder
	b.WriteString("# Rules captured from the kernel (see TestDecodeRuleTable), one per block:\n")
	b.WriteString("#   table FAMILY NAME chain CHAIN\n#   FAMILY: the rule as rules.Rule.Spec(), or - when it is not part of that family\n#   exprs HEX\n")
	seen := map[string]bool{}
	for _, name := range ruleTableScenarios {
		snap, _ := loadSnapshot(t, name)
		for _, m := range snap.Rules {
			fam, attrs, err := msgFamily(m)
			if err != nil {
				t.Fatal(err)
			}
			row := ruleRow{family: fam}
			a := attrIter{b: attrs}
			for a.next() {
				switch a.typ {
				case unix.NFTA_RULE_TABLE:
					row.table = a.str()
				case unix.NFTA_RULE_CHAIN:
					row.chain = a.str()
				case unix.NFTA_RULE_EXPRESSIONS:
					row.exprs = a.data
				}
			}
			if classifyTable(tableID{fam, row.table}) == tableOther || strings.Contains(string(row.exprs), "lookup") {
				continue
			}
			key := fmt.Sprint(fam, row.table, hex.EncodeToString(row.exprs))
			if seen[key] {
				continue
			}
			seen[key] = true
			got, err := row.decode()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "\ntable %s %s chain %s\n", familyName(fam), row.table, row.chain)
			for _, f := range tableFamilies(fam) {
				fmt.Fprintf(&b, "%s: %s\n", f, got[f])
			}
			fmt.Fprintf(&b, "exprs %s\n", hex.EncodeToString(row.exprs))
		}
	}
	if err := os.WriteFile(ruleTableFile, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readRuleTable(t *testing.T) []ruleRow {
	f, err := os.Open(ruleTableFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	families := map[string]uint8{"ip": unix.NFPROTO_IPV4, "ip6": unix.NFPROTO_IPV6, "inet": unix.NFPROTO_INET}
	var rows []ruleRow
	var cur *ruleRow
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "table "):
			var fam, table, chain string
			if _, err := fmt.Sscanf(line, "table %s %s chain %s", &fam, &table, &chain); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			rows = append(rows, ruleRow{family: families[fam], table: table, chain: chain, want: map[rules.Family]string{}})
			cur = &rows[len(rows)-1]
		case cur == nil:
			t.Fatalf("%q before a table line", line)
		case strings.HasPrefix(line, "exprs "):
			if cur.exprs, err = hex.DecodeString(strings.TrimPrefix(line, "exprs ")); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
		case strings.HasPrefix(line, "ipv4: "):
			cur.want[rules.IPv4] = strings.TrimPrefix(line, "ipv4: ")
		case strings.HasPrefix(line, "ipv6: "):
			cur.want[rules.IPv6] = strings.TrimPrefix(line, "ipv6: ")
		default:
			t.Fatalf("unrecognised line %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

func mustMarshalXT(t *testing.T, fam uint8, rev uint32, info xt.InfoAny) []byte {
	t.Helper()
	b, err := xt.Marshal(xt.TableFamily(fam), rev, info)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostStruct lays out a kernel struct of the xt_* headers in host byte order, field by field.
func hostStruct(fields ...any) []byte {
	var b []byte
	for _, f := range fields {
		switch v := f.(type) {
		case uint8:
			b = append(b, v)
		case uint16:
			b = binary.NativeEndian.AppendUint16(b, v)
		case uint32:
			b = binary.NativeEndian.AppendUint32(b, v)
		case be16:
			b = binary.BigEndian.AppendUint16(b, uint16(v))
		case []byte:
			b = append(b, v...)
		default:
			panic(fmt.Sprintf("hostStruct: %T", f))
		}
	}
	for len(b)%8 != 0 { // xtables pads every info to 8 bytes
		b = append(b, 0)
	}
	return b
}

type be16 uint16

func multiportInfo(flags, count uint8, ports []uint16, pflags []uint8, invert uint8) []byte {
	var p [15]uint16
	copy(p[:], ports)
	var pf [15]byte
	copy(pf[:], pflags)
	fields := []any{flags, count}
	for _, x := range p {
		fields = append(fields, x)
	}
	return hostStruct(append(fields, pf[:], invert)...)
}

// TestDecodeXT covers each xtables-compat decoder, with structs laid out as the kernel headers
// say (google/nftables' own marshallers where it has them), including the corners Istio never
// writes and the malformed ones.
func TestDecodeXT(t *testing.T) {
	v4, v6 := uint8(unix.NFPROTO_IPV4), uint8(unix.NFPROTO_IPV6)
	matches := []struct {
		name    string
		family  uint8
		ext     string
		rev     uint32
		info    []byte
		want    string // the matches as a rule spec
		wantErr string
	}{
		{"owner uid", v4, "owner", 1, hostStruct(uint32(1337), uint32(1337), uint32(0), uint32(0), uint8(1), uint8(0)), "-m owner --uid-owner 1337", ""},
		{"owner not gid", v4, "owner", 1, hostStruct(uint32(0), uint32(0), uint32(1337), uint32(1337), uint8(2), uint8(2)), "-m owner ! --gid-owner 1337", ""},
		{"owner uid range, socket-exists", v6, "owner", 1, hostStruct(uint32(1000), uint32(2000), uint32(0), uint32(0), uint8(1|4), uint8(0)), "-m owner --uid-owner 1000-2000 --socket-exists", ""},
		{"owner gid suppl-groups", v4, "owner", 1, hostStruct(uint32(0), uint32(0), uint32(5), uint32(5), uint8(2|8), uint8(0)), "-m owner --gid-owner 5 --suppl-groups", ""},
		{"owner unknown flag", v4, "owner", 1, hostStruct(uint32(0), uint32(0), uint32(0), uint32(0), uint8(0x40), uint8(0)), "", "unknown owner flags"},
		{"owner short", v4, "owner", 1, make([]byte, 12), "", "want at least 18"},
		{"owner rev 0", v4, "owner", 0, make([]byte, 24), "", "not decoded"},
		{"multiport v1 dports", v4, "multiport", 1, multiportInfo(1, 2, []uint16{53, 15008}, nil, 1), "-m multiport ! --dports 53,15008", ""},
		{"multiport v1 range", v4, "multiport", 1, multiportInfo(0, 3, []uint16{80, 8000, 8080}, []uint8{0, 1}, 0), "-m multiport --sports 80,8000:8080", ""},
		{"multiport v0", v4, "multiport", 0, hostStruct(uint8(1), uint8(1), uint16(443), make([]byte, 28)), "-m multiport --dports 443", ""},
		{"multiport either", v4, "multiport", 1, multiportInfo(2, 1, []uint16{22}, nil, 0), "-m multiport --ports 22", ""},
		{"multiport no ports", v4, "multiport", 1, multiportInfo(1, 0, nil, nil, 0), "", "with 0 ports"},
		{"multiport 16 ports", v4, "multiport", 1, multiportInfo(1, 16, nil, nil, 0), "", "with 16 ports"},
		{"multiport open range", v4, "multiport", 1, multiportInfo(1, 1, []uint16{80}, []uint8{1}, 0), "", "range without an end"},
		{"mark", v4, "mark", 1, hostStruct(uint32(0x539), uint32(0xffffffff), uint8(1)), "-m mark ! --mark 0x539/0xffffffff", ""},
		{"connmark", v6, "connmark", 1, hostStruct(uint32(0x1), uint32(0xff), uint8(0)), "-m connmark --mark 0x1/0xff", ""},
		{"mark short", v4, "mark", 1, make([]byte, 8), "", "want at least 9"},
		{"socket rev 0", v4, "socket", 0, nil, "-m socket", ""},
		{"socket rev 3", v4, "socket", 3, hostStruct(uint8(1 | 2)), "-m socket --transparent --nowildcard", ""},
		{"state", v4, "state", 0, hostStruct(uint32(8 | 64)), "-m conntrack --ctstate NEW,UNTRACKED", ""},
		{"comment", v4, "comment", 0, append([]byte("hello"), make([]byte, 251)...), "", ""},
		{"tcp dport", v4, "tcp", 0, mustMarshalXT(t, v4, 0, &xt.Tcp{SrcPorts: [2]uint16{0, 0xffff}, DstPorts: [2]uint16{15008, 15008}, InvFlags: xt.TcpInvDestPorts}), "! --dport 15008", ""},
		{"tcp flags", v4, "tcp", 0, mustMarshalXT(t, v4, 0, &xt.Tcp{SrcPorts: [2]uint16{1024, 65535}, DstPorts: [2]uint16{0, 0xffff}, FlagsMask: 0x17, FlagsCmp: 0x02}), "--sport 1024:65535 --tcp-flags FIN,SYN,RST,ACK SYN", ""},
		{"udp sport", v6, "udp", 0, mustMarshalXT(t, v6, 0, &xt.Udp{SrcPorts: [2]uint16{53, 53}, DstPorts: [2]uint16{0, 0xffff}}), "--sport 53", ""},
		{"conntrack", v4, "conntrack", 3, mustMarshalXT(t, v4, 3, &xt.ConntrackMtinfo3{ConntrackMtinfo2: xt.ConntrackMtinfo2{
			ConntrackMtinfoBase: conntrackBase(xt.ConntrackState, xt.ConntrackState), StateMask: 2 | 4}}), "-m conntrack ! --ctstate ESTABLISHED,RELATED", ""},
		{"conntrack other options", v6, "conntrack", 3, mustMarshalXT(t, v6, 3, &xt.ConntrackMtinfo3{ConntrackMtinfo2: xt.ConntrackMtinfo2{
			ConntrackMtinfoBase: conntrackBase(xt.ConntrackState|xt.ConntrackDirection, 0), StateMask: 1}}), "-m conntrack --ctstate INVALID --ctdir ORIGINAL", ""},
		{"conntrack in inet", unix.NFPROTO_INET, "conntrack", 3, make([]byte, 200), "", "family inet"},
		{"unknown", v4, "addrtype", 1, make([]byte, 8), "", "not decoded"},
	}
	for _, tc := range matches {
		t.Run("match "+tc.name, func(t *testing.T) {
			ms, err := decodeXTMatch(tc.family, tc.ext, tc.rev, tc.info)
			checkErr(t, err, tc.wantErr)
			if err == nil {
				if got := (rules.Rule{Matches: ms}).Spec(); got != tc.want {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			}
		})
	}

	ip := func(s string) []byte { return net.ParseIP(s).To16() }
	targets := []struct {
		name    string
		family  uint8
		ext     string
		rev     uint32
		info    []byte
		want    string
		wantErr string
	}{
		{"REDIRECT ipv4", v4, "REDIRECT", 0, hostStruct(uint32(1), uint32(2), uint32(0), uint32(0), be16(15001), be16(15001)), "-j REDIRECT --to-ports 15001", ""},
		{"REDIRECT ipv4 range", v4, "REDIRECT", 0, hostStruct(uint32(1), uint32(2), uint32(0), uint32(0), be16(15001), be16(15002)), "-j REDIRECT --to-ports 15001-15002", ""},
		{"REDIRECT ipv4 no ports", v4, "REDIRECT", 0, hostStruct(uint32(1), uint32(0), uint32(0), uint32(0), be16(15001), be16(15001)), "-j REDIRECT", ""},
		{"REDIRECT ipv4 two ranges", v4, "REDIRECT", 0, hostStruct(uint32(2), make([]byte, 32)), "", "with 2 ranges"},
		{"REDIRECT ipv4 huge rangesize", v4, "REDIRECT", 0, hostStruct(uint32(0xffffffff), make([]byte, 16)), "", "ranges"},
		{"REDIRECT ipv6", v6, "REDIRECT", 0, mustMarshalXT(t, v6, 0, &xt.NatRange{Flags: 2, MinIP: net.IPv6zero, MaxIP: net.IPv6zero, MinPort: 15006, MaxPort: 15006}), "-j REDIRECT --to-ports 15006", ""},
		{"REDIRECT ipv6 short", v6, "REDIRECT", 0, make([]byte, 36), "", "want at least 40"},
		{"TPROXY v1 ipv4", v4, "TPROXY", 1, hostStruct(uint32(0xffffffff), uint32(0x539), make([]byte, 16), be16(15006)), "-j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff", ""},
		{"TPROXY v1 ipv6 address", v6, "TPROXY", 1, hostStruct(uint32(1), uint32(1), ip("fd00::1"), be16(15006)), "-j TPROXY --on-port 15006 --on-ip fd00::1 --tproxy-mark 0x1/0x1", ""},
		{"TPROXY v0", v4, "TPROXY", 0, hostStruct(uint32(0xff), uint32(0x1), []byte{127, 0, 0, 1}, be16(15006)), "-j TPROXY --on-port 15006 --on-ip 127.0.0.1 --tproxy-mark 0x1/0xff", ""},
		{"TPROXY v0 in ipv6", v6, "TPROXY", 0, make([]byte, 16), "", "not decoded"},
		{"TPROXY short", v4, "TPROXY", 1, make([]byte, 24), "", "want at least 26"},
		{"MARK", v4, "MARK", 2, hostStruct(uint32(0x53a), uint32(0xffffffff)), "-j MARK --set-xmark 0x53a/0xffffffff", ""},
		{"MARK rev 1", v4, "MARK", 1, make([]byte, 16), "", "not decoded"},
		{"CONNMARK save", v4, "CONNMARK", 1, hostStruct(uint32(0), uint32(0xffffffff), uint32(0xffffffff), uint8(1)), "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff", ""},
		{"CONNMARK restore shifted", v4, "CONNMARK", 2, hostStruct(uint32(0), uint32(0xff00), uint32(0xff), uint8(1), uint8(8), uint8(2)), "-j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff00 --right-shift-mark 8", ""},
		{"CONNMARK set", v6, "CONNMARK", 2, hostStruct(uint32(1), uint32(0xff), uint32(0), uint8(0), uint8(0), uint8(0)), "-j CONNMARK --set-xmark 0x1/0xff", ""},
		{"CONNMARK bad mode", v4, "CONNMARK", 1, hostStruct(uint32(0), uint32(0), uint32(0), uint8(7)), "", "mode 7"},
		{"CT zone", v4, "CT", 0, hostStruct(uint16(0), uint16(1), make([]byte, 32)), "-j CT --zone 1", ""},
		{"CT v2 zone-orig", v4, "CT", 2, hostStruct(uint16(1<<2), uint16(3), make([]byte, 64)), "-j CT --zone-orig 3", ""},
		{"CT notrack", v4, "CT", 1, hostStruct(uint16(1), uint16(0), make([]byte, 64)), "-j CT --notrack", ""},
		{"CT helper and zone", v6, "CT", 1, hostStruct(uint16(0), uint16(2), uint32(0), uint32(0), []byte("ftp\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), make([]byte, 40)), "-j CT --helper ftp --zone 2", ""},
		{"CT short", v4, "CT", 2, make([]byte, 40), "", "want at least 60"},
		{"LOG", v4, "LOG", 0, make([]byte, 40), "", "not decoded"},
	}
	for _, tc := range targets {
		t.Run("target "+tc.name, func(t *testing.T) {
			tg, tp, err := decodeXTTarget(tc.family, tc.ext, tc.rev, tc.info)
			checkErr(t, err, tc.wantErr)
			if err != nil {
				return
			}
			d := decodedRule{rule: rules.Rule{Target: tg}, tproxy: tp}
			f := rules.IPv4
			if tc.family == v6 {
				f = rules.IPv6
			}
			if got := d.forFamily(f).Spec(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func conntrackBase(flags, invert xt.ConntrackFlags) xt.ConntrackMtinfoBase {
	z16 := net.IPv6zero
	return xt.ConntrackMtinfoBase{
		OrigSrcAddr: z16, OrigSrcMask: net.IPMask(z16), OrigDstAddr: z16, OrigDstMask: net.IPMask(z16),
		ReplSrcAddr: z16, ReplSrcMask: net.IPMask(z16), ReplDstAddr: z16, ReplDstMask: net.IPMask(z16),
		MatchFlags: uint16(flags), InvertFlags: uint16(invert),
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q, want one containing %q", err, want)
	}
}

// nla builds a netlink attribute (host-order header, padded), for hand-made malformed input.
func nla(typ uint16, data ...[]byte) []byte {
	var payload []byte
	for _, d := range data {
		payload = append(payload, d...)
	}
	return marshalAttrs(attr{typ, payload})
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func expr(name string, data ...[]byte) []byte {
	return nla(unix.NFTA_LIST_ELEM, nla(unix.NFTA_EXPR_NAME, cstring(name)), nla(unix.NFTA_EXPR_DATA, data...))
}

// TestDecodeMalformed: data the kernel would never send is an error, and never a panic.
func TestDecodeMalformed(t *testing.T) {
	cmpData := nla(unix.NFTA_CMP_DATA, nla(unix.NFTA_DATA_VALUE, []byte{6}))
	cases := []struct {
		name  string
		exprs []byte
		want  string
	}{
		{"truncated attribute", []byte{8, 0, 1}, "truncated netlink attribute"},
		{"attribute longer than its buffer", []byte{200, 0, 1, 0, 0, 0, 0, 0}, "outside"},
		{"meta key of 3 bytes", expr("meta", nla(unix.NFTA_META_KEY, []byte{0, 0, 16}), nla(unix.NFTA_META_DREG, be32(1))), "3 bytes"},
		{"meta without register", expr("meta", nla(unix.NFTA_META_KEY, be32(16))), "without a register"},
		{"register out of range", expr("meta", nla(unix.NFTA_META_KEY, be32(16)), nla(unix.NFTA_META_DREG, be32(99))), "register 99"},
		{"load into the verdict register", expr("meta", nla(unix.NFTA_META_KEY, be32(16)), nla(unix.NFTA_META_DREG, be32(0))), "register 0"},
		{"cmp without data", expr("cmp", nla(unix.NFTA_CMP_SREG, be32(1)), nla(unix.NFTA_CMP_OP, be32(0))), "without a register or value"},
		{"cmp bad operator", expr("cmp", nla(unix.NFTA_CMP_SREG, be32(1)), nla(unix.NFTA_CMP_OP, be32(9)), cmpData), "operator 9"},
		{"cmp data without value", expr("cmp", nla(unix.NFTA_CMP_SREG, be32(1)), nla(unix.NFTA_CMP_DATA, nla(7, []byte{1}))), "data without a value"},
		{"verdict without code", expr("immediate", nla(unix.NFTA_IMMEDIATE_DREG, be32(0)), nla(unix.NFTA_IMMEDIATE_DATA, nla(unix.NFTA_DATA_VERDICT, nla(unix.NFTA_VERDICT_CHAIN, cstring("X"))))), "verdict without a code"},
		{"verdict code of 2 bytes", expr("immediate", nla(unix.NFTA_IMMEDIATE_DREG, be32(0)), nla(unix.NFTA_IMMEDIATE_DATA, nla(unix.NFTA_DATA_VERDICT, nla(unix.NFTA_VERDICT_CODE, []byte{0, 1})))), "2 bytes"},
		{"range without bounds", expr("range", nla(unix.NFTA_RANGE_SREG, be32(1))), "without a register or bounds"},
		{"ct direction of 4 bytes", expr("ct", nla(unix.NFTA_CT_KEY, be32(3)), nla(unix.NFTA_CT_DIRECTION, be32(0)), nla(unix.NFTA_CT_DREG, be32(1))), "direction of 4 bytes"},
	}
	ctx := ruleContextFor(unix.NFPROTO_IPV4, "nat")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeRule(ctx, tc.exprs)
			checkErr(t, err, tc.want)
		})
	}

	t.Run("snapshot", func(t *testing.T) {
		table := append([]byte{unix.NFPROTO_IPV4, 0, 0, 0}, nla(unix.NFTA_TABLE_NAME, cstring("nat"))...)
		for _, s := range []*snapshot{
			{Tables: [][]byte{{2, 0}}},
			{Tables: [][]byte{{2, 0, 0, 0}}},
			{Tables: [][]byte{table}, Chains: [][]byte{{2, 0, 0, 0, 9}}},
			{Tables: [][]byte{table}, Rules: [][]byte{append([]byte{2, 0, 0, 0}, nla(unix.NFTA_RULE_TABLE, cstring("nat"))[:6]...)}},
			{Tables: [][]byte{table}, Sets: [][]byte{{2, 0, 0, 0}}},
		} {
			if _, err := decode(s); err == nil {
				t.Errorf("decode(%s) succeeded", strings.TrimSpace(snapshotText(s)))
			}
		}
	})
}

// TestUndecodedIsKept: what the decoder does not understand stays in the rule as MatchOther,
// and a target it does not understand never reads as a jump to a chain.
func TestUndecodedIsKept(t *testing.T) {
	unknown := expr("fib", nla(1, be32(1)))
	d, err := decodeRule(ruleContextFor(unix.NFPROTO_INET, "istio-proxy-nat"), unknown)
	if err != nil {
		t.Fatal(err)
	}
	if !d.rule.Has(rules.MatchOther) {
		t.Errorf("an unknown expression was dropped: %q", d.rule.Spec())
	}
	tg, _, err := decodeXTTarget(unix.NFPROTO_IPV4, "AUDIT", 0, nil)
	if !errors.Is(err, errNotDecoded) || tg.IsJump() {
		t.Errorf("AUDIT target: %v, %+v", err, tg)
	}
	d, err = decodeRule(ruleContextFor(unix.NFPROTO_IPV4, "nat"), expr("target", nla(unix.NFTA_TARGET_NAME, cstring("AUDIT")), nla(unix.NFTA_TARGET_REV, be32(0)), nla(unix.NFTA_TARGET_INFO, make([]byte, 8))))
	if err != nil {
		t.Fatal(err)
	}
	if d.rule.Target.IsJump() || !d.rule.Has(rules.MatchOther) {
		t.Errorf("an undecoded target reads as %q", d.rule.Spec())
	}
}

// TestChainOrder: chains come out as iptables-nft-save prints them, whatever the kernel order.
func TestChainOrder(t *testing.T) {
	cs := []*rules.Chain{{Name: "ISTIO_REDIRECT"}, {Name: "OUTPUT", Builtin: true}, {Name: "ISTIO_INBOUND"}, {Name: "PREROUTING", Builtin: true}, {Name: "ISTIO_IN_REDIRECT"}}
	sortChains(cs)
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	if got, want := strings.Join(names, " "), "PREROUTING OUTPUT ISTIO_INBOUND ISTIO_IN_REDIRECT ISTIO_REDIRECT"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestNativeNames(t *testing.T) {
	for in, want := range map[string]string{"istio-proxy-nat": "nat", "istio-proxy-mangle": "mangle", "istio-proxy-raw": "raw", "istio-ambient-nat": "nat", "istio-foo": "istio-foo"} {
		if got := nativeTableName(in); got != want {
			t.Errorf("nativeTableName(%s) = %s, want %s", in, got, want)
		}
	}
	if got := nativeChainName("istio-in-redirect"); got != "ISTIO_IN_REDIRECT" {
		t.Errorf("nativeChainName = %s", got)
	}
}
