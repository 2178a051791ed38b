package nftread

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// The fuzz targets feed the byte-level decoders garbage and near-misses of real dumps: every
// input must give a rule or an error, never a panic, a hang or a huge allocation.
//
//	go test -run '^$' -fuzz FuzzDecodeRule -fuzztime 60s ./nodecheck/rules/nftread/

// storedSnapshots loads every snapshot under testdata/snapshots, as seeds.
func storedSnapshots(f *testing.F) []*snapshot {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join(snapshotDir, "*.snap"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no snapshots in %s: %v", snapshotDir, err)
	}
	var out []*snapshot
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		s, err := parseSnapshot(string(b))
		if err != nil {
			f.Fatalf("%s: %v", p, err)
		}
		out = append(out, s)
	}
	return out
}

// fuzzSet answers every lookup, with interval elements including the kernel's sentinel.
var fuzzSet = &setInfo{
	name: "__set0", flags: unix.NFT_SET_INTERVAL, keyLen: 2,
	elements: []setElement{
		{key: []byte{0, 0}, flags: unix.NFT_SET_ELEM_INTERVAL_END},
		{key: []byte{0, 53}}, {key: []byte{0, 54}, flags: unix.NFT_SET_ELEM_INTERVAL_END},
		{key: []byte{0x3a, 0x98}}, {key: []byte{0xff}},
	},
}

func FuzzDecodeRule(f *testing.F) {
	for _, s := range storedSnapshots(f) {
		for _, m := range s.Rules {
			fam, attrs, err := msgFamily(m)
			if err != nil {
				continue
			}
			a := attrIter{b: attrs}
			for a.next() {
				if a.typ == unix.NFTA_RULE_EXPRESSIONS {
					f.Add(fam, a.data)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, family uint8, exprs []byte) {
		ctx := &ruleContext{family: family, chainName: nativeChainName, set: func(string) *setInfo { return fuzzSet }}
		d, err := decodeRule(ctx, exprs)
		if err != nil {
			return
		}
		for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
			_ = d.forFamily(f).Spec()
		}
	})
}

var xtNames = []string{"tcp", "udp", "conntrack", "state", "owner", "multiport", "mark", "connmark", "socket", "comment",
	"REDIRECT", "TPROXY", "MARK", "CONNMARK", "CT", "LOG"}

func FuzzDecodeXT(f *testing.F) {
	for i := range xtNames {
		for _, fam := range []uint8{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
			for rev := uint32(0); rev <= 3; rev++ {
				f.Add(fam, uint8(i), rev, make([]byte, 72))
			}
		}
	}
	f.Add(uint8(unix.NFPROTO_IPV4), uint8(5), uint32(1), multiportInfo(1, 2, []uint16{53, 15008}, []uint8{1}, 1))
	f.Add(uint8(unix.NFPROTO_IPV4), uint8(10), uint32(0), hostStruct(uint32(0xffffffff), make([]byte, 16)))
	f.Fuzz(func(t *testing.T, family, name uint8, rev uint32, info []byte) {
		n := xtNames[int(name)%len(xtNames)]
		if strings.ToUpper(n) == n {
			tg, tp, err := decodeXTTarget(family, n, rev, info)
			if err == nil {
				_ = decodedRule{rule: rules.Rule{Target: tg}, tproxy: tp}.forFamily(rules.IPv6).Spec()
			}
			return
		}
		if ms, err := decodeXTMatch(family, n, rev, info); err == nil {
			_ = rules.Rule{Matches: ms}.Spec()
		}
	})
}

// FuzzDecodeSnapshot adds one fuzzed message to a real snapshot, in any of its dumps.
func FuzzDecodeSnapshot(f *testing.F) {
	snaps := storedSnapshots(f)
	var base *snapshot
	for _, s := range snaps {
		if len(s.Sets) > 0 && len(s.Rules) > len(base.rulesOrNil()) {
			base = s
		}
	}
	if base == nil {
		f.Fatal("no snapshot with sets")
	}
	for kind, msgs := range [][][]byte{base.Tables, base.Chains, base.Rules, base.Sets, base.Elems} {
		for _, m := range msgs {
			f.Add(uint8(kind), m)
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, msg []byte) {
		s := &snapshot{
			Tables: append([][]byte(nil), base.Tables...), Chains: append([][]byte(nil), base.Chains...),
			Rules: append([][]byte(nil), base.Rules...), Sets: append([][]byte(nil), base.Sets...),
			Elems: append([][]byte(nil), base.Elems...),
		}
		switch kind % 5 {
		case 0:
			s.Tables = append(s.Tables, msg)
		case 1:
			s.Chains = append(s.Chains, msg)
		case 2:
			s.Rules = append(s.Rules, msg)
		case 3:
			s.Sets = append(s.Sets, msg)
		case 4:
			s.Elems = append(s.Elems, msg)
		}
		if res, err := decode(s); err == nil {
			for _, set := range res.Sets {
				_ = set.Save()
			}
		}
	})
}

func (s *snapshot) rulesOrNil() [][]byte {
	if s == nil {
		return nil
	}
	return s.Rules
}
