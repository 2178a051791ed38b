package istiocni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

var update = flag.Bool("update", false, "rewrite the expected findings in testdata")

// installCase is a node's istio-cni install as testdata/<case>/ describes it: root/ holds the
// node's files (real CNI configs, the plugin's kubeconfig), case.yaml the plugin binary to put
// in the bin dir and what the pod-state source says; expected.json the result. A root with the
// runtime's config (etc/containerd/config.toml) has the check read it, as meshdoctor does.
type installCase struct {
	// Binary: real (the istio-cni plugin test/setup.sh builds), script, empty, noexec, none.
	Binary string    `json:"binary"`
	Pods   *fakePods `json:"pods"`
	// Modes sets files' permissions (octal) after the copy: git keeps only 644 and 755.
	Modes map[string]string `json:"modes"`
}

type fakePods struct {
	Agent AgentState `json:"agent"`
	InCNI []string   `json:"cniModePods"`
	Error string     `json:"error"`
}

func (f *fakePods) IstioCNIAgent(context.Context) (AgentState, error) {
	if f.Error != "" {
		return AgentState{}, errors.New(f.Error)
	}
	return f.Agent, nil
}

func (f *fakePods) CNIModePods(context.Context) ([]string, error) {
	return f.InCNI, nil
}

// realPlugin returns the real istio-cni plugin; without it the test skips locally, fails in CI.
func realPlugin(t *testing.T) string {
	t.Helper()
	path := filepath.Join(testbed.CacheDir(), "bin", PluginType)
	if _, err := os.Stat(path); err != nil {
		msg := fmt.Sprintf("the istio-cni plugin is not built (%v); run test/setup.sh", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true: tests on real binaries must run)")
		}
		t.Skip(msg)
	}
	return path
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if info.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestInstallCases runs the check on each case and compares its findings and state with the
// expected JSON (go test -run TestInstallCases -update rewrites them).
func TestInstallCases(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/case.yaml")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, caseFile := range dirs {
		dir := filepath.Dir(caseFile)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			data, err := os.ReadFile(caseFile)
			if err != nil {
				t.Fatal(err)
			}
			var c installCase
			if err := yaml.UnmarshalStrict(data, &c); err != nil {
				t.Fatalf("case.yaml: %v", err)
			}
			root := t.TempDir()
			copyTree(t, filepath.Join(dir, "root"), root)
			for p, mode := range c.Modes {
				m, err := strconv.ParseUint(mode, 8, 32)
				if err != nil {
					t.Fatalf("case.yaml mode %q: %v", mode, err)
				}
				if err := os.Chmod(filepath.Join(root, p), os.FileMode(m)); err != nil {
					t.Fatal(err)
				}
			}
			binDir := filepath.Join(root, "opt/cni/bin")
			if err := os.MkdirAll(binDir, 0o755); err != nil {
				t.Fatal(err)
			}
			bin := filepath.Join(binDir, PluginType)
			switch c.Binary {
			case "real":
				copyFile(t, realPlugin(t), bin, 0o755)
			case "script":
				if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			case "empty":
				if err := os.WriteFile(bin, nil, 0o755); err != nil {
					t.Fatal(err)
				}
			case "none":
			default:
				t.Fatalf("binary %q", c.Binary)
			}
			chk := &Check{HostRoot: root, ConfDir: filepath.Join(root, "etc/cni/net.d"), BinDir: binDir}
			// A case with the runtime's config (root/etc/containerd) is judged by what it loads.
			if chk.Runtime, err = ReadRuntimeCNI(root); err != nil {
				t.Fatal(err)
			}
			if c.Pods != nil {
				chk.Pods = c.Pods
			}
			res, err := chk.CheckNode(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(map[string]any{"findings": res.Findings, "state": res.Detail}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(bytes.ReplaceAll(got, []byte(root), []byte("$ROOT")), '\n')
			want := filepath.Join(dir, "expected.json")
			if *update {
				if err := os.WriteFile(want, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			w, err := os.ReadFile(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, w) {
				t.Errorf("differs from %s (rerun with -update to accept):\n%s", want, got)
			}
		})
	}
}

func TestMissingConfDirIsAnError(t *testing.T) {
	chk := &Check{ConfDir: filepath.Join(t.TempDir(), "nope"), BinDir: t.TempDir()}
	_, err := chk.CheckNode(context.Background())
	if err == nil || !strings.Contains(err.Error(), "--cni-conf-dir") {
		t.Fatalf("want an error naming the flag to fix, got %v", err)
	}
}

// FuzzConfigFile: whatever a CNI config file holds, reading it never panics, and a file that does
// not parse says why.
func FuzzConfigFile(f *testing.F) {
	for _, name := range []string{"complete", "malformed-primary", "legacy-kubeconfig-in-confdir", "multus-primary"} {
		files, _ := filepath.Glob(filepath.Join("testdata", name, "root/etc/cni/net.d/*"))
		for _, p := range files {
			data, _ := os.ReadFile(p)
			f.Add(data, strings.HasSuffix(p, ".conflist"))
		}
	}
	f.Add([]byte(`{"plugins": [1, "x", null]}`), true)
	f.Add([]byte(`{"type": 5}`), false)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, list bool) {
		path := filepath.Join(dir, "10-x.conf")
		if list {
			path += "list"
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cf, plugins := readConfigFile(path)
		if cf.Error == "" && len(plugins) == 0 {
			t.Fatalf("no error and no plugin for %q", data)
		}
		if cf.Error != "" && len(plugins) > 0 && !strings.Contains(cf.Error, "type") {
			t.Fatalf("plugins returned with a fatal error %q", cf.Error)
		}
		chk := &Check{ConfDir: dir, BinDir: dir, HostRoot: dir}
		if _, err := chk.CheckNode(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}
