package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

var update = flag.Bool("update", false, "rewrite the expected findings under testdata/")

const capturesDir = "../rules/testdata/captures"

// captureReader replays a real capture: the iptables-save output of both backends and families
// that test/cmd/capture-testdata took from a namespace after Istio's pilot-agent wrote its rules.
type captureReader struct {
	dir   string
	addrs []netip.Addr
}

func (c captureReader) ReadRules(_ context.Context, _ string) (rules.Snapshot, error) {
	snap := rules.Snapshot{Addrs: c.addrs}
	files := []struct {
		name    string
		backend rules.Backend
		family  rules.Family
	}{
		{"iptables-nft-save.txt", rules.BackendNft, rules.IPv4},
		{"ip6tables-nft-save.txt", rules.BackendNft, rules.IPv6},
		{"iptables-legacy-save.txt", rules.BackendLegacy, rules.IPv4},
		{"ip6tables-legacy-save.txt", rules.BackendLegacy, rules.IPv6},
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(c.dir, f.name))
		if err != nil {
			return snap, err
		}
		set, err := rules.ParseSave(bytes.NewReader(data), f.backend, f.family)
		if err != nil {
			return snap, err
		}
		snap.Sets = append(snap.Sets, set)
	}
	routing, err := readMarkRoutes(c.dir)
	if err != nil {
		return snap, err
	}
	snap.Routing = routing
	return snap, nil
}

// readMarkRoutes reads the captured `ip rule` and `ip route show table 133` output.
func readMarkRoutes(dir string) ([]rules.MarkRoute, error) {
	rulesText, err := os.ReadFile(filepath.Join(dir, "ip-rule.txt"))
	if err != nil {
		return nil, err
	}
	routesText, err := os.ReadFile(filepath.Join(dir, "ip-route-table-133.txt"))
	if err != nil {
		return nil, err
	}
	localDefault := map[rules.Family]bool{}
	fam := rules.IPv4
	for _, line := range strings.Split(string(routesText), "\n") {
		switch {
		case strings.HasPrefix(line, "# ip -6"):
			fam = rules.IPv6
		case strings.HasPrefix(line, "# ip -4"):
			fam = rules.IPv4
		case strings.HasPrefix(line, "local default dev lo"):
			localDefault[fam] = true
		}
	}
	var out []rules.MarkRoute
	fam = rules.IPv4
	for _, line := range strings.Split(string(rulesText), "\n") {
		switch {
		case strings.HasPrefix(line, "# ip -6"):
			fam = rules.IPv6
		case strings.HasPrefix(line, "# ip -4"):
			fam = rules.IPv4
		case strings.Contains(line, "fwmark"):
			var prio, table int
			var mark uint32
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "%d:\tfrom all fwmark %v lookup %d", &prio, &mark, &table); err != nil {
				return nil, fmt.Errorf("%s: %q: %w", dir, line, err)
			}
			out = append(out, rules.MarkRoute{Family: fam, Mark: mark, Mask: 0xffffffff, Table: table, LocalDefault: table == 133 && localDefault[fam]})
		}
	}
	return out, nil
}

// addrsOf gives the addresses the test bed puts in a namespace: dual stack, IPv4 first, unless
// the scenario made it IPv6-only.
func addrsOf(scenario string) []netip.Addr {
	v4, v6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:10:244::5")
	if strings.Contains(scenario, "ipv6-only") {
		return []netip.Addr{v6}
	}
	return []netip.Addr{v4, v6}
}

// TestCheckRealCaptures runs the check over every real capture and compares its findings with
// testdata/<scenario>.json, the expected result kept beside each case. Native-nftables captures
// are left to the end-to-end test (their rules are read over netlink, not from iptables-save).
func TestCheckRealCaptures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(capturesDir, "*"))
	if len(dirs) == 0 {
		t.Fatal("no captures: run test/cmd/capture-testdata")
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() || strings.Contains(name, "native-nftables") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			var ann map[string]string
			data, err := os.ReadFile(filepath.Join(dir, "annotations.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &ann); err != nil {
				t.Fatal(err)
			}
			chk := &Check{Reader: captureReader{dir: dir, addrs: addrsOf(name)}}
			res, err := chk.Check(t.Context(), nodecheck.Target{Netns: dir, Annotations: ann})
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(struct {
				Capture  *nodecheck.Capture  `json:"capture"`
				Findings []nodecheck.Finding `json:"findings"`
			}{res.Capture, res.Findings}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			want := filepath.Join("testdata", name+".json")
			if *update {
				if err := os.WriteFile(want, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("findings differ from %s:\n--- got\n%s--- want\n%s", want, got, exp)
			}
		})
	}
}

type noRouting struct{ captureReader }

func (r noRouting) ReadRules(ctx context.Context, p string) (rules.Snapshot, error) {
	s, err := r.captureReader.ReadRules(ctx, p)
	s.Routing = nil
	return s, err
}

// TPROXY needs `ip rule fwmark 1337 lookup 133` besides its mangle rules: with the real mangle
// rules but no policy routing, capture is incomplete.
func TestTProxyWithoutPolicyRouting(t *testing.T) {
	dir := filepath.Join(capturesDir, "sidecar-tproxy")
	ann := map[string]string{istiopod.AnnotationInterceptionMode: istiopod.ModeTProxy}
	with, err := (&Check{Reader: captureReader{dir: dir, addrs: addrsOf("")}}).Check(t.Context(), nodecheck.Target{Annotations: ann})
	if err != nil {
		t.Fatal(err)
	}
	if len(with.Findings) != 0 {
		t.Fatalf("the real TPROXY capture has findings: %+v", with.Findings)
	}
	without, err := (&Check{Reader: noRouting{captureReader{dir: dir, addrs: addrsOf("")}}}).Check(t.Context(), nodecheck.Target{Annotations: ann})
	if err != nil {
		t.Fatal(err)
	}
	if len(without.Findings) != 1 || without.Findings[0].Code != nodecheck.RedirectRulesIncomplete ||
		!strings.Contains(without.Findings[0].Message, "fwmark 0x539") {
		t.Errorf("want one RedirectRulesIncomplete naming the fwmark rule, got %+v", without.Findings)
	}
}

// Swapping two adjacent RETURN rules changes nothing; moving the catch-all redirect above the
// exclusions changes everything.
func TestCompareOrderByMeaning(t *testing.T) {
	cfg, err := intent.FromAnnotations(nil)
	if err != nil {
		t.Fatal(err)
	}
	exp := BuildExpected(cfg, rules.IPv4, true)
	build := func(order []int) *rules.RuleSet {
		set := &rules.RuleSet{Backend: rules.BackendNft, Family: rules.IPv4}
		for _, tc := range exp.Chains() {
			want := exp.Tables[tc.Table][tc.Chain]
			c := set.AddTable(tc.Table).AddChain(tc.Chain)
			if tc.Chain == chainInbound && order != nil {
				for _, i := range order {
					c.Rules = append(c.Rules, want[i].Rule)
				}
				continue
			}
			for _, w := range want {
				c.Rules = append(c.Rules, w.Rule)
			}
		}
		return set
	}
	// ISTIO_INBOUND: 15008, 15090, 15021, 15020 RETURNs, then the jump to ISTIO_IN_REDIRECT.
	if d := Compare(exp, []*rules.RuleSet{build([]int{3, 1, 0, 2, 4})}); len(d.Chains) != 0 {
		t.Errorf("reordered RETURN rules reported: %+v", d.Chains)
	}
	d := Compare(exp, []*rules.RuleSet{build([]int{4, 0, 1, 2, 3})})
	if len(d.Chains) != 1 || !d.Chains[0].OutOfOrder {
		t.Errorf("redirect before the exclusions not reported as out of order: %+v", d.Chains)
	}
}
