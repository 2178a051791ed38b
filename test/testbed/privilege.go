package testbed

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Linux capability numbers (linux/capability.h) the test bed needs.
const (
	capNetAdmin = 12 // iptables, nft, ip link/addr
	capSysAdmin = 21 // ip netns add/exec: mount and setns
)

// inCI reports whether we run in CI, where a skipped privileged test would hide a regression.
func inCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFatal skips the test locally and fails it in CI, for a test that needs something of the
// machine (a privilege, cgroup v2) that CI has.
func SkipOrFatal(tb testing.TB, format string, args ...any) {
	tb.Helper()
	skipOrFatal(tb, format, args...)
}

// skipOrFatal skips the test locally and fails it in CI.
func skipOrFatal(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		tb.Fatalf("%s (CI=true: privileged tests must run in CI)", msg)
	}
	tb.Skip(msg)
}

// RequirePrivileged skips the test unless the process is root with CAP_NET_ADMIN and
// CAP_SYS_ADMIN and the test bed's tools are installed; with CI=true it fails the test instead.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	if err := checkPrivileged(); err != nil {
		skipOrFatal(tb, "testbed: %v; run the privileged tests as root (sudo -E go test ...)", err)
	}
	if err := checkTools(); err != nil {
		skipOrFatal(tb, "testbed: %v; run test/setup.sh", err)
	}
}

func checkPrivileged() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("not root (euid %d)", uid)
	}
	caps, err := effectiveCapabilities()
	if err != nil {
		return err
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		if caps&(1<<c.bit) == 0 {
			return fmt.Errorf("root but without %s", c.name)
		}
	}
	return nil
}

// effectiveCapabilities reads CapEff from /proc/self/status: root in a container may lack
// capabilities, and then every netns operation would fail with a confusing EPERM.
func effectiveCapabilities() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("reading capabilities: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing CapEff %q: %w", v, err)
			}
			return caps, nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, fmt.Errorf("reading /proc/self/status: %w", err)
	}
	return 0, fmt.Errorf("no CapEff line in /proc/self/status")
}

// requiredTools are the binaries test/setup.sh installs from Debian.
func requiredTools() []string {
	return []string{
		"ip", "nft", "setpriv",
		"iptables-nft", "iptables-nft-save", "ip6tables-nft", "ip6tables-nft-save",
		"iptables-legacy", "iptables-legacy-save", "ip6tables-legacy", "ip6tables-legacy-save",
	}
}

func checkTools() error {
	var missing []string
	for _, name := range requiredTools() {
		if _, err := findTool(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s", strings.Join(missing, " "))
	}
	return nil
}
