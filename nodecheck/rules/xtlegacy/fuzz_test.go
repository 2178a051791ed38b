package xtlegacy

import (
	"errors"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// FuzzDecodeEntries feeds damaged versions of the captured tables to the decoder: it must never
// panic, and anything it does not accept must be an ErrCorrupt error. The table's size and entry
// count are fixed up to the blob, so the fuzzer gets past the first checks into the entries.
//
//	go test -run '^$' -fuzz FuzzDecodeEntries -fuzztime 60s ./nodecheck/rules/xtlegacy/
func FuzzDecodeEntries(f *testing.F) {
	if ne.Uint16([]byte{1, 0}) == 1 { // the captures are little-endian
		for _, sc := range scenarios() {
			for _, fam := range []rules.Family{rules.IPv4, rules.IPv6} {
				raws, err := loadCapture(sc.name, fam)
				if err != nil {
					f.Fatal(err)
				}
				for _, r := range raws {
					f.Add(uint8(fam), r.Info, r.Entries)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, family uint8, infoBytes, blob []byte) {
		fam := rules.IPv4
		if family%2 == 1 {
			fam = rules.IPv6
		}
		info, err := DecodeInfo(infoBytes)
		if err != nil {
			return
		}
		info.Size = uint32(len(blob))
		l, _ := layoutFor(fam)
		if es, err := splitEntries(l, blob, 0); err == nil {
			info.NumEntries = uint32(len(es))
		}
		tab, err := DecodeEntries(fam, info.Name, info, blob)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		// Whatever decodes must render, with a verdict policy on every builtin chain.
		set := &rules.RuleSet{Backend: rules.BackendLegacy, Family: fam, Tables: []*rules.Table{tab}}
		_ = set.Save()
		for _, c := range tab.Chains {
			if c.Builtin != (c.Policy == "ACCEPT" || c.Policy == "DROP") {
				t.Fatalf("chain %s: builtin %v with policy %q", c.Name, c.Builtin, c.Policy)
			}
		}
	})
}
