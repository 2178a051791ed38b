package netfilter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyHostNft copies this machine's own nft (Debian 12's nftables 1.0.6 on the test bed) to
// dst: a real binary, not committed.
func copyHostNft(t *testing.T, dst string) {
	t.Helper()
	b, err := os.ReadFile("/usr/sbin/nft")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the test bed's nft: %v", err)
		}
		t.Skipf("no /usr/sbin/nft on this machine: %v", err)
	}
	writeFile(t, dst, b)
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// testdata/nft-1.1.4.rodata is the strings nft prints for --version laid out as in the test bed's
// binary (release name, PACKAGE_VERSION, PACKAGE_NAME, the format), with a newer version.
func TestReadHostNft(t *testing.T) {
	newer := []byte(readFile(t, "testdata/nft-1.1.4.rodata"))
	cases := []struct {
		name    string
		setup   func(t *testing.T, root string)
		path    string // under root
		version string
		notRead string
	}{
		{name: "this machine's nft", setup: func(t *testing.T, root string) { copyHostNft(t, filepath.Join(root, "usr/sbin/nft")) },
			path: "usr/sbin/nft", version: "1.0.6"},
		{name: "a newer nft in /usr/bin", setup: func(t *testing.T, root string) { writeFile(t, filepath.Join(root, "usr/bin/nft"), newer) },
			path: "usr/bin/nft", version: "1.1.4"},
		{name: "an absolute link resolves under the host root", setup: func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, "opt/nftables/nft"), newer)
			if err := os.Symlink("/opt/nftables/nft", filepath.Join(root, "sbin/nft")); err != nil {
				t.Fatal(err)
			}
		}, path: "opt/nftables/nft", version: "1.1.4"},
		{name: "no nft", setup: func(t *testing.T, root string) {}, notRead: "no nft under"},
		{name: "a file named nft without a version", setup: func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, "usr/sbin/nft"), []byte("#!/bin/sh\nexec nftables \"$@\"\n\x00nftables\x00"))
		}, path: "usr/sbin/nft", notRead: "no version"},
		// 97 bytes before "nftables": the window starts after the "1", where "000….0.6" would read as a version.
		{name: "a cut string at the window's edge is not read", setup: func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, "usr/sbin/nft"), []byte("\x001"+strings.Repeat("0", 92)+".0.6\x00nftables\x00%s v%s (%s)\x00"))
		}, path: "usr/sbin/nft", notRead: "no version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.MkdirAll(filepath.Join(root, "sbin"), 0o755); err != nil {
				t.Fatal(err)
			}
			c.setup(t, root)
			h := ReadHostNft(root)
			want := ""
			if c.path != "" {
				want = filepath.Join(root, c.path)
			}
			if h.Path != want || h.Version != c.version || !strings.Contains(h.NotRead, c.notRead) || (c.notRead == "") != (h.NotRead == "") {
				t.Errorf("read %+v, want path %s, version %q, not read %q", h, want, c.version, c.notRead)
			}
		})
	}
}

func TestVersionBefore(t *testing.T) {
	for _, c := range []struct {
		a    string
		want bool
	}{{"1.0.6", true}, {"0.9.8", true}, {"1.1.3", true}, {"1.1", true}, {"1.1.4", false}, {"1.1.10", false}, {"1.2", false}, {"", false}, {"v1.0", false}} {
		if got := versionBefore(c.a, NftFixedIn); got != c.want {
			t.Errorf("%q before %s: %v, want %v", c.a, NftFixedIn, got, c.want)
		}
	}
}

// Links resolve as on the node: an absolute one under the host root, and none may climb out of it.
func TestUnderRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/sbin", "sbin", "bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/nft"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"sbin/nft": "/usr/sbin/nft", "bin/nft": "../../../../../../etc/hostname"} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := underRoot(root, "sbin/nft"); err != nil || got != filepath.Join(root, "usr/sbin/nft") {
		t.Errorf("absolute link: %q, %v; want the node's usr/sbin/nft", got, err)
	}
	if got, err := underRoot(root, "bin/nft"); err == nil {
		t.Errorf("a link out of the host root resolved to %q", got)
	}
}
