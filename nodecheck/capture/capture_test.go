package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
// the expected result kept beside each case, twice: testdata/<scenario>.json judges the pod by
// its annotations alone (a bare --netns run, a runtime that gave no spec), and
// testdata/<scenario>.init-args.json by istio-init's argv and env as the runtime started it (the
// args the capture ran, after the image's pilot-agent entrypoint, and the annotations'
// proxyMetadata as env, as the injection template renders them). Native-nftables captures are left
// to the end-to-end test (their rules are read over netlink, not from iptables-save). A healthy
// scenario (sidecar-*) must have no error finding either way.
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
		ann := readAnnotations(t, dir)
		byAnnotations := nodecheck.Target{Netns: dir, Annotations: ann}
		t.Run(name, func(t *testing.T) { checkCapture(t, dir, byAnnotations, name+".json") })
		init, err := capturedInit(dir, ann)
		if err != nil {
			t.Fatal(err)
		}
		if init == nil {
			continue // istio-init never ran
		}
		byArgs := nodecheck.Target{Netns: dir, Annotations: ann, Containers: []nodecheck.Container{*init}}
		t.Run(name+"/init-args", func(t *testing.T) { checkCapture(t, dir, byArgs, name+".init-args.json") })
	}
}

func checkCapture(t *testing.T, dir string, target nodecheck.Target, golden string) {
	t.Helper()
	name := filepath.Base(dir)
	chk := &Check{Reader: captureReader{dir: dir, addrs: addrsOf(name)}}
	res, err := chk.Check(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(name, "sidecar-") {
		for _, f := range res.Findings {
			if f.Severity == nodecheck.SeverityError {
				t.Errorf("healthy capture has an error: %s: %s", f.Code, f.Message)
			}
		}
	}
	got, err := json.MarshalIndent(struct {
		Capture  *nodecheck.Capture  `json:"capture"`
		Findings []nodecheck.Finding `json:"findings"`
	}{res.Capture, res.Findings}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	compareGolden(t, filepath.Join("testdata", golden), got, *update)
}

// compareGolden compares got with the expected result kept in the file want, or rewrites that
// file when update is set (go test -update).
func compareGolden(t *testing.T, want string, got []byte, update bool) {
	t.Helper()
	if update {
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
		t.Errorf("result differs from %s:\n--- got\n%s--- want\n%s", want, got, exp)
	}
}

// capturedInit is istio-init as the runtime would have started it for the capture's first run:
// pilot-agent, the args of args.txt, and the proxyMetadata of the pod's proxy.istio.io/config as
// env. Nil when istio-init did not run.
func capturedInit(dir string, ann map[string]string) (*nodecheck.Container, error) {
	data, err := os.ReadFile(filepath.Join(dir, "args.txt"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	first, _, _ := strings.Cut(string(data), "--- next run\n")
	args := strings.Split(strings.TrimSuffix(first, "\n"), "\n")
	if len(args) == 0 || args[0] != "istio-iptables" {
		return nil, nil
	}
	meta, err := intent.ProxyMetadata(ann[istiopod.AnnotationProxyConfig])
	if err != nil {
		return nil, err
	}
	var env []string
	for k, v := range meta {
		env = append(env, k+"="+v)
	}
	slices.Sort(env)
	return &nodecheck.Container{Name: istiopod.ContainerIstioInit, Role: nodecheck.RoleInit, UID: 0, GID: 0,
		Args: append([]string{"/usr/local/bin/pilot-agent"}, args...), Env: env}, nil
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

// The capture of a pod whose non-default values came from the mesh, not from annotations: what
// the injection template does with values.global.proxy. Judged by annotations it looks broken;
// judged by istio-init's args it is what Istio wrote.
func TestMeshWideValuesOnlyInArgs(t *testing.T) {
	dir := filepath.Join(capturesDir, "sidecar-custom-ports")
	init, err := capturedInit(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	chk := &Check{Reader: captureReader{dir: dir, addrs: addrsOf("")}}
	bare, err := chk.Check(t.Context(), nodecheck.Target{Netns: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !hasCode(bare.Findings, nodecheck.RedirectRulesMismatch) {
		t.Fatalf("judged by Istio's defaults the custom ports should differ: %+v", bare.Findings)
	}
	res, err := chk.Check(t.Context(), nodecheck.Target{Netns: dir, Containers: []nodecheck.Container{*init}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 0 || res.Capture.Intent != string(intent.SourceInitArgs) {
		t.Errorf("judged by istio-init's args: intent %q, findings %+v", res.Capture.Intent, res.Findings)
	}
}

func TestProxyUIDMismatch(t *testing.T) {
	dir := filepath.Join(capturesDir, "sidecar-default")
	init, err := capturedInit(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		user     *nodecheck.User
		severity nodecheck.Severity // "" for no finding
	}{
		{"the proxy runs as -u", &nodecheck.User{UID: 1337, GID: 1337}, ""},
		{"unknown user", nil, ""},
		{"unknown group, right UID", &nodecheck.User{UID: 1337, GID: -1}, ""},
		{"neither excluded: a loop", &nodecheck.User{UID: 1000680000, GID: 1000680000}, nodecheck.SeverityError},
		{"the GID alone lets it out", &nodecheck.User{UID: 1500, GID: 1337}, nodecheck.SeverityWarning},
	}
	chk := &Check{Reader: captureReader{dir: dir, addrs: addrsOf("")}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := chk.Check(t.Context(), nodecheck.Target{Netns: dir, Containers: []nodecheck.Container{*init}, ProxyUser: c.user})
			if err != nil {
				t.Fatal(err)
			}
			var got nodecheck.Severity
			for _, f := range res.Findings {
				if f.Code == nodecheck.ProxyUIDMismatch {
					got = f.Severity
					if ev := f.Evidence; ev["proxyUID"] != c.user.UID || !slices.Equal(ev["excludedUIDs"].([]string), []string{"1337"}) {
						t.Errorf("evidence %v", ev)
					}
				} else {
					t.Errorf("other finding: %s %s", f.Code, f.Message)
				}
			}
			if got != c.severity {
				t.Errorf("ProxyUIDMismatch severity %q, want %q", got, c.severity)
			}
		})
	}
}

// In TPROXY mode the injector runs istio-proxy as root in group 1337: healthy, not a mismatch.
// Root in another group is not let out at all.
func TestProxyUIDMismatchTProxy(t *testing.T) {
	dir := filepath.Join(capturesDir, "sidecar-tproxy")
	ann := map[string]string{istiopod.AnnotationInterceptionMode: istiopod.ModeTProxy}
	init, err := capturedInit(dir, ann)
	if err != nil || init == nil {
		t.Fatalf("istio-init of %s: %v", dir, err)
	}
	chk := &Check{Reader: captureReader{dir: dir, addrs: addrsOf("")}}
	for _, c := range []struct {
		user     nodecheck.User
		severity nodecheck.Severity
	}{
		{nodecheck.User{UID: 0, GID: 1337}, ""},
		{nodecheck.User{UID: 0, GID: 0}, nodecheck.SeverityError},
	} {
		res, err := chk.Check(t.Context(), nodecheck.Target{Netns: dir, Annotations: ann,
			Containers: []nodecheck.Container{*init}, ProxyUser: &c.user})
		if err != nil {
			t.Fatal(err)
		}
		var got nodecheck.Severity
		for _, f := range res.Findings {
			if f.Code == nodecheck.ProxyUIDMismatch {
				got = f.Severity
			}
		}
		if got != c.severity {
			t.Errorf("proxy %d:%d: ProxyUIDMismatch severity %q, want %q; findings %+v", c.user.UID, c.user.GID, got, c.severity, res.Findings)
		}
	}
}

// An annotation edited after injection: a warning with both values; the rules, written from the
// args, still verify.
func TestCaptureIntentDrift(t *testing.T) {
	dir := filepath.Join(capturesDir, "sidecar-custom-ports")
	ann := readAnnotations(t, dir)
	init, err := capturedInit(dir, ann)
	if err != nil {
		t.Fatal(err)
	}
	ann[istiopod.AnnotationExcludeOutboundPorts] = "3306"
	chk := &Check{Reader: captureReader{dir: dir, addrs: addrsOf("")}}
	res, err := chk.Check(t.Context(), nodecheck.Target{Netns: dir, Annotations: ann, Containers: []nodecheck.Container{*init}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != nodecheck.CaptureIntentDrift || res.Findings[0].Severity != nodecheck.SeverityWarning ||
		!strings.Contains(res.Findings[0].Message, `"3306" but --istio-local-outbound-ports-exclude "3306,5432"`) {
		t.Errorf("want one CaptureIntentDrift warning with both values, got %+v", res.Findings)
	}
}

func hasCode(fs []nodecheck.Finding, code nodecheck.Code) bool {
	for _, f := range fs {
		if f.Code == code {
			return true
		}
	}
	return false
}

// withoutIPv6Jump deletes the ip6 nat OUTPUT jump into ISTIO_OUTPUT from a real capture, as
// `ip6tables -t nat -D OUTPUT -p tcp -j ISTIO_OUTPUT` does.
type withoutIPv6Jump struct{ captureReader }

func (r withoutIPv6Jump) ReadRules(ctx context.Context, p string) (rules.Snapshot, error) {
	s, err := r.captureReader.ReadRules(ctx, p)
	for _, set := range s.Sets {
		if set.Family != rules.IPv6 {
			continue
		}
		for _, tbl := range set.Tables {
			for _, c := range tbl.Chains {
				if tbl.Name == "nat" && c.Name == "OUTPUT" {
					c.Rules = slices.DeleteFunc(c.Rules, func(r rules.Rule) bool { return strings.Contains(r.Spec(), "-j ISTIO_OUTPUT") })
				}
			}
		}
	}
	return s, err
}

// A dual-stack pod whose IPv6 jump was deleted is a partial IPv6 capture, whether the intent says
// dual-stack (istio-init's env) or not (a bare run without it): Istio's IPv6 chains are there.
func TestDualStackIPv6JumpDeleted(t *testing.T) {
	dir := filepath.Join(capturesDir, "sidecar-dual-stack")
	ann := readAnnotations(t, dir)
	init, err := capturedInit(dir, ann)
	if err != nil {
		t.Fatal(err)
	}
	chk := &Check{Reader: withoutIPv6Jump{captureReader{dir: dir, addrs: addrsOf(dir)}}}
	for name, target := range map[string]nodecheck.Target{
		"by init env":        {Netns: dir, Containers: []nodecheck.Container{*init}},
		"without dual-stack": {Netns: dir},
		"by the annotation":  {Netns: dir, Annotations: ann},
	} {
		res, err := chk.Check(t.Context(), target)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Findings) != 1 || res.Findings[0].Code != nodecheck.RedirectRulesIncomplete ||
			!strings.Contains(res.Findings[0].Message, "ipv6") || strings.Contains(res.Findings[0].Message, "ipv4") {
			t.Errorf("%s: want one RedirectRulesIncomplete for ipv6, got %+v", name, res.Findings)
		}
	}
}

// readAnnotations reads a capture's annotations.json: the pod annotations its run stood for.
func readAnnotations(t testing.TB, dir string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "annotations.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ann map[string]string
	if err := json.Unmarshal(data, &ann); err != nil {
		t.Fatalf("%s/annotations.json: %v", dir, err)
	}
	return ann
}
