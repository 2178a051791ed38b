package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// PilotAgentVersion is the istio.io/istio pseudo-version test/setup.sh builds pilot-agent from.
// Keep it in sync with ISTIO_VERSION in test/setup.sh.
const PilotAgentVersion = "v0.0.0-20260827124520-eed52ebb66ad"

// PilotAgentEnv names the environment variable that points at a pilot-agent binary and
// overrides the cache.
const PilotAgentEnv = "MESHDOCTOR_PILOT_AGENT"

// CacheDir is where test/setup.sh keeps the tools it builds:
// $MESHDOCTOR_CACHE, else $HOME/.cache/meshdoctor.
func CacheDir() string {
	if dir := os.Getenv("MESHDOCTOR_CACHE"); dir != "" {
		return dir
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "meshdoctor")
}

// FindPilotAgent returns the pilot-agent binary from $MESHDOCTOR_PILOT_AGENT or the cache's
// bin directory, for callers that are not tests.
func FindPilotAgent() (string, error) {
	path := os.Getenv(PilotAgentEnv)
	source := "$" + PilotAgentEnv
	if path == "" {
		path = filepath.Join(CacheDir(), "bin", "pilot-agent")
		source = "the test bed cache"
	}
	info, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("pilot-agent not found at %s (from %s): run test/setup.sh", path, source)
		}
		return "", fmt.Errorf("pilot-agent at %s: %w", path, err)
	}
	if info.IsDir() || info.Mode()&0o111 == 0 {
		return "", fmt.Errorf("pilot-agent at %s (from %s) is not an executable file", path, source)
	}
	return path, nil
}

// PilotAgent returns the pilot-agent binary for a test. When it is missing the test is skipped
// with a hint to run test/setup.sh, or failed when CI=true.
func PilotAgent(tb testing.TB) string {
	tb.Helper()
	path, err := FindPilotAgent()
	if err != nil {
		skipOrFatal(tb, "testbed: %v", err)
	}
	return path
}

// IstioSource returns the directory of the pinned istio.io/istio module in the Go module cache
// (go install of pilot-agent puts it there), for tests that read Istio's own files, such as its
// injection template. When it is missing the test is skipped, or failed when CI=true.
func IstioSource(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		skipOrFatal(tb, "testbed: go env GOMODCACHE: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "istio.io", "istio@"+PilotAgentVersion)
	if _, err := os.Stat(dir); err != nil {
		skipOrFatal(tb, "testbed: Istio's source is not in the module cache (%v): run test/setup.sh", err)
	}
	return dir
}
