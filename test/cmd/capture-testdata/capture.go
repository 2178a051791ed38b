package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// probeTimeout shortens Istio's 5 s validation timeout for broken scenarios; a working
// redirect answers in milliseconds.
const probeTimeout = "--probe-timeout=2s"

type capturer struct {
	pilotAgent string
	outDir     string
}

// captured is what the index needs to know about a finished scenario.
type captured struct {
	scenario
	validation string
}

// file is one capture file and the command inside the namespace that produces it.
type file struct {
	name string
	argv []string
}

func captureFiles() []file {
	return []file{
		{"iptables-nft-save.txt", []string{"iptables-nft-save"}},
		{"ip6tables-nft-save.txt", []string{"ip6tables-nft-save"}},
		{"iptables-legacy-save.txt", []string{"iptables-legacy-save"}},
		{"ip6tables-legacy-save.txt", []string{"ip6tables-legacy-save"}},
		{"nft-list-ruleset.txt", []string{"nft", "list", "ruleset"}},
		{"nft-ruleset.json", []string{"nft", "-j", "list", "ruleset"}},
		{"ip_tables_names.txt", []string{"cat", "/proc/net/ip_tables_names"}},
		{"ip6_tables_names.txt", []string{"cat", "/proc/net/ip6_tables_names"}},
	}
}

// capture runs one scenario in its own namespace, always deleted, and writes its files.
func (c capturer) capture(ctx context.Context, s scenario) (_ captured, err error) {
	opts := append([]testbed.Option{testbed.WithPilotAgent(c.pilotAgent)}, s.netns...)
	ns, err := testbed.Create(ctx, opts...)
	if err != nil {
		return captured{}, err
	}
	defer func() { err = errors.Join(err, ns.Delete()) }()

	for _, args := range append([][]string{s.args}, s.extraRuns...) {
		if args == nil {
			continue
		}
		if err := ns.IstioIptablesEnv(ctx, s.env, args...); err != nil {
			return captured{}, err
		}
	}
	if s.breakRules != nil {
		if err := s.breakRules(ctx, ns); err != nil {
			return captured{}, fmt.Errorf("breaking rules: %w", err)
		}
	}
	dir := filepath.Join(c.outDir, s.name)
	if err := os.RemoveAll(dir); err != nil {
		return captured{}, fmt.Errorf("clearing %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return captured{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := writeInputs(dir, s); err != nil {
		return captured{}, err
	}
	if err := writeState(ctx, dir, ns); err != nil {
		return captured{}, err
	}
	// Validate after reading: its probe connection bumps packet counters, and the captures
	// show what istio-init left, untouched.
	verdict, err := validate(ctx, ns)
	if err != nil {
		return captured{}, err
	}
	if err := writeFile(dir, "validation.txt", verdict+"\n"); err != nil {
		return captured{}, err
	}
	return captured{scenario: s, validation: verdict}, nil
}

func validate(ctx context.Context, ns *testbed.Netns) (string, error) {
	ok, out, err := ns.ValidateWith(ctx, probeTimeout)
	switch {
	case err != nil:
		return "", fmt.Errorf("%w\n%s", err, out)
	case ok:
		return "passed", nil
	default:
		return "failed", nil
	}
}

// writeInputs records what produced the capture.
func writeInputs(dir string, s scenario) error {
	if s.args != nil {
		runs := append([][]string{s.args}, s.extraRuns...)
		var b strings.Builder
		for i, args := range runs {
			if i > 0 {
				b.WriteString("--- next run\n") // only mixed scenarios run pilot-agent twice
			}
			b.WriteString("istio-iptables\n")
			for _, a := range args {
				b.WriteString(a + "\n")
			}
		}
		if err := writeFile(dir, "args.txt", b.String()); err != nil {
			return err
		}
	}
	if len(s.env) > 0 {
		if err := writeFile(dir, "env.txt", strings.Join(s.env, "\n")+"\n"); err != nil {
			return err
		}
	}
	annotations := s.annotations
	if annotations == nil {
		annotations = map[string]string{}
	}
	js, err := json.MarshalIndent(annotations, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding annotations: %w", err)
	}
	return writeFile(dir, "annotations.json", string(js)+"\n")
}

// writeState records the namespace's rules with the read-only commands of captureFiles.
func writeState(ctx context.Context, dir string, ns *testbed.Netns) error {
	for _, f := range captureFiles() {
		out, err := ns.Exec(ctx, f.argv[0], f.argv[1:]...)
		if err != nil && !procFileAbsent(f, err) {
			return err
		}
		if err := writeFile(dir, f.name, string(out)); err != nil {
			return err
		}
	}
	routing := []struct {
		name string
		cmds [][]string
	}{
		{"ip-rule.txt", [][]string{{"-4", "rule"}, {"-6", "rule"}}},
		{"ip-route-table-133.txt", [][]string{{"-4", "route", "show", "table", "133"}, {"-6", "route", "show", "table", "133"}}},
	}
	for _, r := range routing {
		var b strings.Builder
		for _, args := range r.cmds {
			out, err := ns.Exec(ctx, "ip", args...)
			if err != nil && !routeTableAbsent(err) {
				return err
			}
			fmt.Fprintf(&b, "# ip %s\n%s", strings.Join(args, " "), out)
		}
		if err := writeFile(dir, r.name, b.String()); err != nil {
			return err
		}
	}
	return nil
}

// procFileAbsent tells a missing /proc/net/ip*_tables_names (x_tables not loaded: no legacy
// table can exist) from a real failure; it is recorded as an empty file.
func procFileAbsent(f file, err error) bool {
	var execErr *testbed.ExecError
	return f.argv[0] == "cat" && errors.As(err, &execErr) && strings.Contains(string(execErr.Output), "No such file")
}

// routeTableAbsent tells "no routing table 133" (nothing but TPROXY creates it) from a failure.
func routeTableAbsent(err error) bool {
	var execErr *testbed.ExecError
	return errors.As(err, &execErr) && strings.Contains(string(execErr.Output), "FIB table does not exist")
}

func writeFile(dir, name, content string) error {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// writeIndex writes DIR/README.md: what each scenario is and how to regenerate them.
func writeIndex(outDir string, results []captured) error {
	var b strings.Builder
	fmt.Fprintf(&b, `# Real Istio rule captures

Generated by test/cmd/capture-testdata on %s from Istio pilot-agent %s
(istio.io/istio pseudo-version), iptables and nftables of the generating machine.
Do not edit by hand; regenerate as root with:

    test/setup.sh && go run ./test/cmd/capture-testdata nodecheck/rules/testdata/captures

Each scenario ran `+"`pilot-agent istio-iptables ARGS`"+` in a fresh pod-like network namespace, as
istio-init does (root with only CAP_NET_ADMIN and CAP_NET_RAW), then Istio's own validation
(as istio-validation does, uid 1337). The *-save files are verbatim, including the
"# Generated by ... on DATE" lines; an empty file means that backend and family has no table.
See the package doc of test/cmd/capture-testdata for the list of files.

| scenario | Istio validation | what |
|---|---|---|
`, time.Now().UTC().Format("2006-01-02"), testbed.PilotAgentVersion)
	for _, r := range results {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", r.name, r.validation, r.description)
	}
	b.WriteString(`
Notes:
- --force-iptables-binary and --native-nftables are not per-pod annotations: the first is a
  break-glass flag (also settable as proxyMetadata FORCE_IPTABLES_BINARY), the second the mesh-wide
  value global.nativeNftables. Their annotations.json is therefore empty.
- Istio's backend probing leaves empty tables behind, so a table that exists is not a sign
  that rules exist. An auto-detected (iptables-nft) run leaves empty legacy "nat" tables for
  IPv4 and IPv6 and an nft "table ip6 nat" holding only an INPUT base chain (when IPv6 is
  off); a forced legacy run leaves an empty legacy IPv6 "nat"; a native nftables run probes
  nothing and leaves only "table inet istio-proxy-nat".
- Istio's validation only proves the nat OUTPUT path of the proxy's own uid over lo:
  broken-inbound-jump-deleted passes it although inbound capture is gone.
`)
	return writeFile(outDir, "README.md", b.String())
}
