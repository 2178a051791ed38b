package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestKubectlPlugin: started as kubectl-meshdoctor (as kubectl runs its plugins, by path), the
// binary is the cluster command, with its flags and help under kubectl's name.
func TestKubectlPlugin(t *testing.T) {
	for _, argv0 := range []string{"kubectl-meshdoctor", "/usr/local/bin/kubectl-meshdoctor"} {
		root := rootFor(argv0, &profiling{})
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs([]string{"--help"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "kubectl meshdoctor [flags]") || root.Flags().Lookup("selector") == nil {
			t.Errorf("%s: not the cluster command:\n%s", argv0, out.String())
		}
	}
	for _, argv0 := range []string{"meshdoctor", filepath.Join(t.TempDir(), "meshdoctor"), "kubectl"} {
		root := rootFor(argv0, &profiling{})
		if c, _, err := root.Find([]string{"cluster"}); err != nil || c.Name() != "cluster" {
			t.Errorf("%s: no cluster subcommand (%v)", argv0, err)
		}
	}
}

// TestClusterFlags: bad flags and an unusable kubeconfig cannot run (exit 2), before any request.
func TestClusterFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	for _, args := range [][]string{
		{"cluster", "-o", "yaml"},
		{"cluster", "--parallel", "0"},
		{"cluster", "--timeout", "0s"},
		{"cluster", "--port", "70000"},
		{"cluster", "--kubeconfig", missing},
	} {
		if _, code := runMeshdoctor(t, args...); code != exitCannot {
			t.Errorf("%v: exit %d, want %d", args, code, exitCannot)
		}
	}
	// Every flag says what it is for.
	c, _, _ := newRootCommand(&profiling{}).Find([]string{"cluster"})
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if strings.TrimSpace(f.Usage) == "" {
			t.Errorf("--%s has no help", f.Name)
		}
	})
}
