// Command capture-testdata records what Istio's own rule writer leaves in a pod network
// namespace, for a set of scenarios, so that meshdoctor's rule parsers and checks are built
// and tested against real output rather than hand-written text.
//
// For each scenario it creates a throwaway namespace (test/testbed), runs
// `pilot-agent istio-iptables ...` in it exactly as istio-init would, optionally breaks the
// rules with the real tools, and writes into DIR/<scenario>/:
//
//	args.txt                   pilot-agent's arguments, one per line (an empty line is an empty argument)
//	env.txt                    environment given to pilot-agent (proxyMetadata), if any
//	annotations.json           the pod annotations that yield these arguments (for `check --annotations`)
//	iptables-nft-save.txt      iptables-nft-save, verbatim
//	ip6tables-nft-save.txt     ip6tables-nft-save
//	iptables-legacy-save.txt   iptables-legacy-save
//	ip6tables-legacy-save.txt  ip6tables-legacy-save
//	nft-list-ruleset.txt       nft list ruleset
//	nft-ruleset.json           nft -j list ruleset
//	ip_tables_names.txt        /proc/net/ip_tables_names inside the namespace (legacy tables that exist)
//	ip6_tables_names.txt       /proc/net/ip6_tables_names
//	ip-rule.txt                ip -4 rule and ip -6 rule (TPROXY adds fwmark rules)
//	ip-route-table-133.txt     routes of table 133 (TPROXY's local route)
//	validation.txt             Istio's own verdict: "passed" or "failed" (istio-validation's check)
//
// and a README.md in DIR listing the scenarios. It needs root and pilot-agent (test/setup.sh).
//
// Usage:
//
//	go run ./test/cmd/capture-testdata [-only a,b] [-pilot-agent PATH] DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "capture-testdata:", err)
		os.Exit(1)
	}
}

func run() error {
	only := flag.String("only", "", "comma-separated scenario names to capture (default: all)")
	pilotAgent := flag.String("pilot-agent", "", "pilot-agent binary (default: $"+testbed.PilotAgentEnv+" or test/setup.sh's cache)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: capture-testdata [flags] DIR\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		return fmt.Errorf("want exactly one output directory")
	}
	outDir := flag.Arg(0)

	if *pilotAgent == "" {
		path, err := testbed.FindPilotAgent()
		if err != nil {
			return err
		}
		*pilotAgent = path
	}
	selected, err := selectScenarios(scenarios(), *only)
	if err != nil {
		return err
	}
	// A signal cancels the context, so running commands stop and every namespace is deleted.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	c := capturer{pilotAgent: *pilotAgent, outDir: outDir}
	var results []captured
	for _, s := range selected {
		r, err := c.capture(ctx, s)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", s.name, err)
		}
		fmt.Fprintf(os.Stderr, "captured %-40s validation %s\n", s.name, r.validation)
		results = append(results, r)
	}
	if *only != "" {
		return nil // a partial run leaves the index of the full set alone
	}
	return writeIndex(outDir, results)
}

func selectScenarios(all []scenario, only string) ([]scenario, error) {
	if only == "" {
		return all, nil
	}
	var out []scenario
	for _, name := range strings.Split(only, ",") {
		i := slices.IndexFunc(all, func(s scenario) bool { return s.name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q", name)
		}
		out = append(out, all[i])
	}
	return out, nil
}
