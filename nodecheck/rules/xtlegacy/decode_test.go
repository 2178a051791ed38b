package xtlegacy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// skipOnBigEndian: the captures are little-endian kernel structs, as the kernel returned them.
func skipOnBigEndian(tb testing.TB) {
	tb.Helper()
	if ne.Uint16([]byte{1, 0}) != 1 {
		tb.Skip("testdata/ holds little-endian captures")
	}
}

// TestGolden decodes every captured table and compares the rule set with the expected text
// beside it: want.save, which for Istio's own rules is also what rules.ParseSave makes of the
// iptables-legacy-save output captured in the same namespace (iptables-legacy-save.txt).
func TestGolden(t *testing.T) {
	skipOnBigEndian(t)
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join("testdata", sc.name)); err != nil {
				t.Fatalf("no capture for scenario %s (sudo -E go test -run TestCaptureTestdata -update): %v", sc.name, err)
			}
			families := 0
			for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
				raws, err := loadCapture(sc.name, f)
				if err != nil {
					t.Fatal(err)
				}
				if raws == nil {
					continue
				}
				families++
				set, err := decodeSet(f, raws)
				if err != nil {
					t.Fatalf("%v: %v", f, err)
				}
				dir := familyDir(sc.name, f)
				want := readFile(t, filepath.Join(dir, "want.save"))
				if got := set.Save(); got != want {
					t.Errorf("%v: decoded rules differ from want.save:\n%s", f, lineDiff(want, got))
				}
				if sc.reviewed {
					continue
				}
				parsed, err := parseSaveText(readFile(t, filepath.Join(dir, "iptables-legacy-save.txt")), f)
				if err != nil {
					t.Fatal(err)
				}
				if parsed != want {
					t.Errorf("%v: want.save differs from ParseSave(iptables-legacy-save.txt):\n%s", f, lineDiff(parsed, want))
				}
			}
			if families == 0 {
				t.Errorf("scenario %s captured no table", sc.name)
			}
		})
	}
}

// TestGoldenEvidence pins facts the golden files only imply.
func TestGoldenEvidence(t *testing.T) {
	skipOnBigEndian(t)
	// Istio's probing leaves an empty ip6 nat table: it is read, with its builtin chains.
	raws, err := loadCapture("sidecar-redirect", rules.IPv6)
	if err != nil || len(raws) != 1 {
		t.Fatalf("sidecar-redirect ipv6 capture: %v, %d tables", err, len(raws))
	}
	nat, err := raws[0].Decode()
	if err != nil {
		t.Fatal(err)
	}
	if nat.Name != "nat" || nat.Origin != "ip6_tables nat" || nat.RuleCount() != 0 || len(nat.Chains) != 4 {
		t.Errorf("empty ip6 nat table decoded as %+v", nat)
	}
	for _, c := range nat.Chains {
		if !c.Builtin || c.Policy != "ACCEPT" {
			t.Errorf("chain %+v: want a builtin chain with policy ACCEPT", c)
		}
	}
}

func readFile(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// capture returns a copy of one captured table, for tests that damage it.
func capture(tb testing.TB, scenario string, f rules.Family, table string) (Info, []byte) {
	tb.Helper()
	skipOnBigEndian(tb)
	raws, err := loadCapture(scenario, f)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range raws {
		if r.Name == table {
			info, err := DecodeInfo(r.Info)
			if err != nil {
				tb.Fatal(err)
			}
			return info, bytes.Clone(r.Entries)
		}
	}
	tb.Fatalf("no %v %s table in scenario %s", f, table, scenario)
	return Info{}, nil
}

func mustSplit(tb testing.TB, f rules.Family, blob []byte) []entry {
	tb.Helper()
	l, _ := layoutFor(f)
	es, err := splitEntries(l, blob, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return es
}

// firstEntry returns the first entry whose target is named target and that has a match.
func firstEntry(tb testing.TB, f rules.Family, blob []byte, target string, withMatch bool) entry {
	tb.Helper()
	l, _ := layoutFor(f)
	for _, e := range mustSplit(tb, f, blob) {
		if e.tname == target && (e.target > l.size) == withMatch {
			return e
		}
	}
	tb.Fatalf("no entry with target %q (match: %v)", target, withMatch)
	return entry{}
}

func TestDecodeInfo(t *testing.T) {
	in := Info{Name: "mangle", ValidHooks: 0x1f, NumEntries: 33, Size: 6072,
		HookEntry: [5]uint32{0, 864, 1016, 1168, 2144}, Underflow: [5]uint32{712, 864, 1016, 1992, 2144}}
	out, err := DecodeInfo(encodeInfo(in))
	if err != nil || out != in {
		t.Errorf("DecodeInfo(encodeInfo(%+v)) = %+v, %v", in, out, err)
	}
	for _, n := range []int{0, infoSize - 1, infoSize + 1} {
		if _, err := DecodeInfo(make([]byte, n)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("DecodeInfo of %d bytes: %v, want ErrCorrupt", n, err)
		}
	}
}

// TestDecodeEntriesCorrupt damages a real table in every way a blob can be wrong: each must be
// an ErrCorrupt error, never a panic and never a quietly different rule set.
func TestDecodeEntriesCorrupt(t *testing.T) {
	const f = rules.IPv4
	good, goodBlob := capture(t, "sidecar-tproxy-dualstack", f, "mangle")
	l, _ := layoutFor(f)
	es := mustSplit(t, f, goodBlob)
	last := es[len(es)-1]
	withMatch := firstEntry(t, f, goodBlob, "", true)
	userHead := firstEntry(t, f, goodBlob, errorTargetName, false)
	policy := es[0]
	for _, e := range es {
		if e.off == int(good.Underflow[0]) {
			policy = e
		}
	}

	cases := []struct {
		name   string
		damage func(info *Info, b []byte) []byte
	}{
		{"size disagrees with info", func(info *Info, b []byte) []byte { info.Size += 8; return b }},
		{"entry count disagrees", func(info *Info, b []byte) []byte { info.NumEntries--; return b }},
		{"next_offset 0", func(info *Info, b []byte) []byte { ne.PutUint16(b[withMatch.off+l.nextOffset:], 0); return b }},
		{"next_offset past the end", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[last.off+l.nextOffset:], uint16(len(last.b)+8))
			return b
		}},
		{"target_offset inside the entry header", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[withMatch.off+l.targetOffset:], uint16(l.size-8))
			return b
		}},
		{"target_offset past next_offset", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[withMatch.off+l.targetOffset:], uint16(len(withMatch.b)))
			return b
		}},
		{"target size 0", func(info *Info, b []byte) []byte { ne.PutUint16(b[withMatch.off+withMatch.target:], 0); return b }},
		{"target size past the entry", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[withMatch.off+withMatch.target:], uint16(len(withMatch.b)))
			return b
		}},
		{"match size 0", func(info *Info, b []byte) []byte { ne.PutUint16(b[withMatch.off+l.size:], 0); return b }},
		{"match size past the target", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[withMatch.off+l.size:], uint16(withMatch.target-l.size+8))
			return b
		}},
		{"standard target of the wrong size", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[policy.off+policy.target:], standardTargetSize-8)
			return b
		}},
		{"hook entry inside an entry", func(info *Info, b []byte) []byte { info.HookEntry[3] += 8; return b }},
		{"hook entry past the end", func(info *Info, b []byte) []byte { info.HookEntry[3] = uint32(len(b)); return b }},
		{"two hooks at one entry", func(info *Info, b []byte) []byte { info.HookEntry[1] = info.HookEntry[0]; return b }},
		{"unknown hook", func(info *Info, b []byte) []byte { info.ValidHooks |= 1 << 7; return b }},
		{"underflow not where the chain ends", func(info *Info, b []byte) []byte { info.Underflow[0] = info.HookEntry[0]; return b }},
		{"policy RETURN", func(info *Info, b []byte) []byte {
			ne.PutUint32(b[policy.off+policy.target+extHeaderSize:], uint32(0xffffffff+verdictReturn+1))
			return b
		}},
		{"no final ERROR entry", func(info *Info, b []byte) []byte { b[last.off+last.target+2] = 'X'; return b }},
		{"user chain without a name", func(info *Info, b []byte) []byte { b[userHead.off+userHead.target+extHeaderSize] = 0; return b }},
		{"user chain named like a builtin", func(info *Info, b []byte) []byte {
			copy(b[userHead.off+userHead.target+extHeaderSize:], "OUTPUT\x00")
			return b
		}},
		{"misaligned entry", func(info *Info, b []byte) []byte {
			ne.PutUint16(b[withMatch.off+l.nextOffset:], uint16(len(withMatch.b)-4))
			return b
		}},
		{"empty", func(info *Info, b []byte) []byte { info.Size, info.NumEntries = 0, 0; return nil }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			info := good
			b := c.damage(&info, bytes.Clone(goodBlob))
			tab, err := DecodeEntries(f, "mangle", info, b)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("DecodeEntries = %v, want ErrCorrupt; decoded:\n%s", err, render(tab))
			}
		})
	}
	t.Run("unknown family", func(t *testing.T) {
		if _, err := DecodeEntries(rules.Family(5), "mangle", good, goodBlob); err == nil {
			t.Error("no error")
		}
	})
}

// TestDecodeEntriesTruncated cuts a real table at every length: always an error, never a panic.
func TestDecodeEntriesTruncated(t *testing.T) {
	for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
		good, blob := capture(t, "sidecar-redirect-dualstack-dns", f, "nat")
		for n := range len(blob) {
			info := good
			if _, err := DecodeEntries(f, "nat", info, blob[:n]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%v cut at %d of %d: %v, want ErrCorrupt", f, n, len(blob), err)
			}
			info.Size = uint32(n)
			if _, err := DecodeEntries(f, "nat", info, blob[:n]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%v cut at %d of %d with a matching size: %v, want ErrCorrupt", f, n, len(blob), err)
			}
		}
	}
}

// TestDecodeEntriesUnusual: blobs the kernel accepts but iptables never writes still decode,
// saying what they mean instead of dropping it.
func TestDecodeEntriesUnusual(t *testing.T) {
	const f = rules.IPv4
	good, goodBlob := capture(t, "sidecar-redirect", f, "nat")
	l, _ := layoutFor(f)
	redirect := firstEntry(t, f, goodBlob, "REDIRECT", false) // -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
	tcpRule := firstEntry(t, f, goodBlob, "", true)           // -A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN

	cases := []struct {
		name   string
		damage func(b []byte)
		chain  string
		want   string // the first rule of chain
	}{
		{"jump into the middle of a chain", func(b []byte) {
			ne.PutUint32(b[tcpRule.off+tcpRule.target+extHeaderSize:], uint32(redirect.off+8))
		}, "ISTIO_INBOUND", fmt.Sprintf("-p tcp --dport 15008 -j ?jump to offset %d", redirect.off+8)},
		{"unknown verdict", func(b []byte) {
			ne.PutUint32(b[tcpRule.off+tcpRule.target+extHeaderSize:], uint32(0xffffffff-2)) // -3: NF_STOLEN
		}, "ISTIO_INBOUND", "-p tcp --dport 15008 -j ?verdict-3"},
		{"unknown match", func(b []byte) {
			copy(b[tcpRule.off+l.size+2:], "xyz\x00")
		}, "ISTIO_INBOUND", "-p tcp -m xyz (rev 0) data=0000ffffa03aa03a -j RETURN"},
		{"unknown revision of a known target", func(b []byte) {
			b[redirect.off+redirect.target+2+extNameLen] = 9
		}, "ISTIO_IN_REDIRECT", "-p tcp -j REDIRECT (rev 9) data=010000000200000000000000000000003a9e3a9e"},
		{"inverted any-interface", func(b []byte) {
			b[redirect.off+l.invFlags] |= invViaIn
		}, "ISTIO_IN_REDIRECT", "! -i + -p tcp -j REDIRECT --to-ports 15006"},
		{"inverted full port range", func(b []byte) {
			d := b[tcpRule.off+l.size+extHeaderSize:]
			ne.PutUint16(d[4:], 0)
			ne.PutUint16(d[6:], 0xffff)
			d[11] = 0x02
		}, "ISTIO_INBOUND", "-p tcp ! --dport 0:65535 -j RETURN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(goodBlob)
			c.damage(b)
			tab, err := DecodeEntries(f, "nat", good, b)
			if err != nil {
				t.Fatal(err)
			}
			ch := tab.Chain(c.chain)
			if ch == nil || len(ch.Rules) == 0 {
				t.Fatalf("no rule in %s:\n%s", c.chain, render(tab))
			}
			if got := ch.Rules[0].Spec(); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestIfaceName(t *testing.T) {
	pad := func(s string) []byte { b := make([]byte, ifNameSize); copy(b, s); return b }
	full := func(n int) []byte {
		b := make([]byte, ifNameSize)
		for i := range n {
			b[i] = 0xff
		}
		return b
	}
	cases := []struct {
		name string
		mask []byte
		want string
	}{
		{"eth0", full(5), "eth0"},  // exact: the mask covers the NUL
		{"veth", full(4), "veth+"}, // prefix
		{"lo", full(3), "lo"},
		{"abcdefghijklmno", full(16), "abcdefghijklmno"}, // longest name, no room for '+'
		{"abcdefghijklmno", full(15), "abcdefghijklmno+"},
	}
	for _, c := range cases {
		if got := ifaceName(pad(c.name), c.mask); got != c.want {
			t.Errorf("ifaceName(%q, %x) = %q, want %q", c.name, c.mask, got, c.want)
		}
	}
}

func render(t *rules.Table) string {
	if t == nil {
		return "<nil>"
	}
	return (&rules.RuleSet{Tables: []*rules.Table{t}}).Save()
}

// lineDiff lists the lines only in want ("-") and only in got ("+"), in order.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	inG, inW := map[string]int{}, map[string]int{}
	for _, l := range g {
		inG[l]++
	}
	for _, l := range w {
		inW[l]++
	}
	var b strings.Builder
	for _, l := range w {
		if inG[l] > 0 {
			inG[l]--
			continue
		}
		fmt.Fprintf(&b, "- %s\n", l)
	}
	for _, l := range g {
		if inW[l] > 0 {
			inW[l]--
			continue
		}
		fmt.Fprintf(&b, "+ %s\n", l)
	}
	if b.Len() == 0 {
		return "(same lines, different order)\n--- want:\n" + want + "--- got:\n" + got
	}
	return b.String()
}

// BenchmarkDecodeEntries is Read's decoding half alone: the default dual-stack sidecar tables.
func BenchmarkDecodeEntries(b *testing.B) {
	skipOnBigEndian(b)
	var raws []RawTable
	for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
		r, err := loadCapture("sidecar-redirect-dualstack-dns", f)
		if err != nil {
			b.Fatal(err)
		}
		raws = append(raws, r...)
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range raws {
			if _, err := r.Decode(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
