package xtlegacy

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// update rewrites testdata/ from live captures: sudo -E go test -run TestCaptureTestdata -update
var update = flag.Bool("update", false, "rewrite testdata/ from live captures of every scenario (needs root)")

// scenario is one way a pod's legacy tables look, written by the real tools. Its capture under
// testdata/NAME/ feeds the unprivileged golden test; the privileged tests replay it live.
type scenario struct {
	name string
	// write puts the rules into a fresh pod-like namespace.
	write func(ctx context.Context, ns *testbed.Netns) error
	// reviewed is true when the expected text is testdata/NAME/FAMILY/want.save as reviewed by a
	// person, because rules.ParseSave cannot read the iptables-save text (e.g. --tcp-flags) or
	// reads it with less meaning than the kernel has (unknown extensions). Otherwise the expected
	// text is what rules.ParseSave makes of iptables-legacy-save, and want.save must equal it.
	reviewed bool
}

func legacyArgs(args ...string) []string {
	return append(args, "--force-iptables-binary", "legacy")
}

func istio(env []string, args ...string) func(context.Context, *testbed.Netns) error {
	return func(ctx context.Context, ns *testbed.Netns) error {
		return ns.IstioIptablesEnv(ctx, env, args...)
	}
}

// restore loads testdata/NAME/ipv4.rules and ipv6.rules with iptables-legacy-restore.
func restore(name string) func(context.Context, *testbed.Netns) error {
	return func(ctx context.Context, ns *testbed.Netns) error {
		for _, f := range []struct{ file, cmd string }{{"ipv4.rules", "iptables-legacy-restore"}, {"ipv6.rules", "ip6tables-legacy-restore"}} {
			path, err := filepath.Abs(filepath.Join("testdata", name, f.file))
			if err != nil {
				return err
			}
			if _, err := ns.Exec(ctx, f.cmd, path); err != nil {
				return err
			}
		}
		return nil
	}
}

func scenarios() []scenario {
	sidecar := testbed.DefaultSidecarArgs()
	withArgs := func(extra ...string) []string { return legacyArgs(append(append([]string{}, sidecar...), extra...)...) }
	return []scenario{
		// What istio-init writes for a default sidecar: IPv4 rules only, and Istio's probing
		// leaves an empty ip6 nat table behind.
		{name: "sidecar-redirect", write: istio(nil, legacyArgs(sidecar...)...)},
		// Dual stack and DNS capture, switched on through proxyMetadata as istio-init gets them.
		{name: "sidecar-redirect-dualstack-dns", write: istio([]string{"ISTIO_DUAL_STACK=true", "ISTIO_META_DNS_CAPTURE=true"}, legacyArgs(sidecar...)...)},
		// TPROXY interception: mangle table, marks, connmark, conntrack, TPROXY, raw CT zones.
		{name: "sidecar-tproxy-dualstack", write: istio(nil, withArgs("-m", "TPROXY", "--dual-stack", "--redirect-dns", "--drop-invalid")...)},
		// Every annotation-driven option Istio has, with custom ports and users.
		{name: "sidecar-custom", write: istio([]string{"ISTIO_DUAL_STACK=true", "ISTIO_META_DNS_CAPTURE=true"}, legacyArgs(
			"-p", "15101", "-z", "15106", "-u", "1500", "-g", "1501", "-m", "REDIRECT",
			"-i", "10.0.0.0/8,172.16.0.0/12,fd00::/8", "-x", "", "-b", "8080,9090", "-q", "3306",
			"-o", "6379,11211", "-k", "vnet0", "-c", "eth1")...)},
		// Excluded CIDRs and ports, as with istio-cni (which also excludes outbound 15020).
		{name: "sidecar-exclusions", write: istio([]string{"ISTIO_DUAL_STACK=true"}, legacyArgs(
			"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
			"-x", "10.96.0.0/12,169.254.169.254/32,fd00:96::/108", "-b", "*",
			"-d", "15090,15021,15020,8443", "-o", "15020")...)},
		// Istio writing with iptables-nft: its backend probing leaves empty legacy tables, which
		// must be read as tables that exist without rules.
		{name: "nft-backend-probe-leftovers", write: istio(nil, sidecar...)},
		// Every extension the decoder knows, and some it does not, written by hand.
		{name: "extensions", write: restore("extensions"), reviewed: true},
	}
}

// familyDir is where a scenario's capture of one family lives.
func familyDir(scenario string, f rules.Family) string {
	return filepath.Join("testdata", scenario, f.String())
}

// loadCapture reads a family's capture: the tables in the kernel's order, or nil when the
// family had no legacy table.
func loadCapture(scenario string, f rules.Family) ([]RawTable, error) {
	dir := familyDir(scenario, f)
	names, err := os.ReadFile(filepath.Join(dir, "names"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var raws []RawTable
	for _, name := range strings.Fields(string(names)) {
		info, err := os.ReadFile(filepath.Join(dir, name+".info"))
		if err != nil {
			return nil, err
		}
		entries, err := os.ReadFile(filepath.Join(dir, name+".entries"))
		if err != nil {
			return nil, err
		}
		raws = append(raws, RawTable{Family: f, Name: name, Info: info, Entries: entries})
	}
	return raws, nil
}

// decodeSet decodes raw tables of one family into a RuleSet as Read does.
func decodeSet(f rules.Family, raws []RawTable) (*rules.RuleSet, error) {
	set := &rules.RuleSet{Backend: rules.BackendLegacy, Family: f}
	for _, r := range raws {
		t, err := r.Decode()
		if err != nil {
			return nil, fmt.Errorf("table %s: %w", r.Name, err)
		}
		set.Tables = append(set.Tables, t)
	}
	return set, nil
}

// parseSaveText is what rules.ParseSave makes of iptables-legacy-save output, rendered.
func parseSaveText(save string, f rules.Family) (string, error) {
	set, err := rules.ParseSave(strings.NewReader(save), rules.BackendLegacy, f)
	if err != nil {
		return "", err
	}
	return set.Save(), nil
}

// dropSaveComments removes iptables-save's "# Generated/Completed on DATE" lines, which differ
// between any two runs.
func dropSaveComments(save string) string {
	var b strings.Builder
	for line := range strings.Lines(save) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}
