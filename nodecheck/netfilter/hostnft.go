package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
)

// NftFixedIn is the first nftables release whose nft lists and deletes tables with udata-bearing
// sets without crashing (upstream commit be737a1986bf, istio/istio#58492).
const NftFixedIn = "1.1.4"

// nftPaths are where distributions install nft, under the host root.
func nftPaths() []string { return []string{"usr/sbin/nft", "sbin/nft", "usr/bin/nft"} }

// maxNftBinary bounds what is read of a file named nft: the real one is tens of KiB (it links
// libnftables), a static build a few MiB.
const maxNftBinary = 32 << 20

// HostNft is the node's own nft, read from its binary's bytes, never run: the version is
// PACKAGE_VERSION beside PACKAGE_NAME ("nftables") in the strings nft prints for --version. The
// binary is read rather than dpkg's status file because every distribution has one (RPM, apk and
// image-based nodes keep no dpkg database), and a package database can name a version that is not
// the binary on the path.
type HostNft struct {
	// Path is the binary read, under the host root; empty when none was found.
	Path    string `json:"path,omitempty"`
	Version string `json:"version,omitempty"`
	// NotRead says why no version is known.
	NotRead string `json:"notRead,omitempty"`
	// IstioNativeTable says whether istio-cni's native host table is in the node's netns; it is
	// read only for a version before NftFixedIn (nil otherwise, or when it could not be read).
	IstioNativeTable *bool `json:"istioNativeTable,omitempty"`
	// TableNotRead says why the node's netns could not be read for the table.
	TableNotRead string `json:"tableNotRead,omitempty"`
}

// ReadHostNft finds the node's nft under hostRoot and reads its version.
func ReadHostNft(hostRoot string) HostNft {
	for _, p := range nftPaths() {
		path, err := underRoot(hostRoot, p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return HostNft{Path: filepath.Join(hostRoot, p), NotRead: err.Error()}
		}
		return readNftBinary(path)
	}
	return HostNft{NotRead: fmt.Sprintf("no nft under %s (%s)", hostRoot, strings.Join(nftPaths(), ", "))}
}

// underRoot resolves name's symbolic links under root, as the node would from its own /: an
// absolute link (/sbin/nft → /usr/sbin/nft) means the node's file, not the agent's.
func underRoot(root, name string) (string, error) {
	path := filepath.Join(root, name)
	for hops := 0; hops < 8; hops++ {
		fi, err := os.Lstat(path)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return path, nil
		}
		target, err := os.Readlink(path)
		if err != nil {
			return "", fmt.Errorf("reading the link %s: %w", path, err)
		}
		if filepath.IsAbs(target) {
			path = filepath.Join(root, target)
		} else {
			path = filepath.Join(filepath.Dir(path), target)
		}
		// A relative link climbing out (../../..) would name the agent's own file, not the node's.
		if rel, err := filepath.Rel(root, path); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", fmt.Errorf("%s: a link leads out of %s", filepath.Join(root, name), root)
		}
	}
	return "", fmt.Errorf("%s: too many links", filepath.Join(root, name))
}

func readNftBinary(path string) HostNft {
	h := HostNft{Path: path}
	fi, err := os.Stat(path)
	if err != nil {
		h.NotRead = err.Error()
		return h
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxNftBinary {
		h.NotRead = fmt.Sprintf("%s is not a regular file under %d bytes", path, maxNftBinary)
		return h
	}
	b, err := os.ReadFile(path)
	if err != nil {
		h.NotRead = fmt.Sprintf("reading %s: %v", path, err)
		return h
	}
	v, ok := nftVersionIn(b)
	if !ok {
		h.NotRead = fmt.Sprintf("no version beside \"nftables\" in %s", path)
		return h
	}
	h.Version = v
	return h
}

// nftVersionIn finds the version among the NUL-terminated strings next to "nftables" in an nft
// binary. The strings at the window's edges may be cut and are not looked at: a cut "1.0.6"
// would read as "0.6".
func nftVersionIn(b []byte) (string, bool) {
	const name, window = "\x00nftables\x00", 96
	for off := 0; off < len(b); {
		i := bytes.Index(b[off:], []byte(name))
		if i < 0 {
			return "", false
		}
		at := off + i
		lo, hi := max(0, at-window), min(len(b), at+len(name)+window)
		parts := bytes.Split(b[lo:hi], []byte{0})
		if len(parts) > 2 {
			for _, p := range parts[1 : len(parts)-1] {
				if _, ok := parseVersion(string(p)); ok {
					return string(p), true
				}
			}
		}
		off = at + 1
	}
	return "", false
}

// parseVersion reads MAJOR.MINOR[.PATCH].
func parseVersion(s string) ([3]int, bool) {
	var v [3]int
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p == "" || p[0] == '+' {
			return v, false
		}
		v[i] = n
	}
	return v, true
}

// versionBefore says whether version a is older than b; an unreadable one is not.
func versionBefore(a, b string) bool {
	va, okA := parseVersion(a)
	vb, okB := parseVersion(b)
	if !okA || !okB {
		return false
	}
	for i := range va {
		if va[i] != vb[i] {
			return va[i] < vb[i]
		}
	}
	return false
}

// AmbientHost reads istio-cni's node side (ambienthost.Reader, or its Cached).
type AmbientHost interface {
	Read(ctx context.Context) (ambienthost.State, error)
}

// judgeHostNft reads whether istio-cni's native table is on the node when its nft is older than
// NftFixedIn, and says NodeNftTooOld when it is.
func judgeHostNft(ctx context.Context, h *HostNft, host AmbientHost) (nodecheck.Finding, bool) {
	if host == nil || !versionBefore(h.Version, NftFixedIn) {
		return nodecheck.Finding{}, false
	}
	st, err := host.Read(ctx)
	if err != nil {
		h.TableNotRead = err.Error()
		return nodecheck.Finding{}, false
	}
	found := st.Nftables.Found
	h.IstioNativeTable = &found
	if !found {
		return nodecheck.Finding{}, false
	}
	return NftTooOldFinding(*h), true
}

// NftTooOldFinding is NodeNftTooOld for the node's nft h, istio-cni's native table being there.
// Info: the crash is the node's own tooling's, never a pod's capture.
func NftTooOldFinding(h HostNft) nodecheck.Finding {
	return nodecheck.Finding{
		Code:     nodecheck.NodeNftTooOld,
		Severity: nodecheck.SeverityInfo,
		Message: fmt.Sprintf("the node's nft (%s) is version %s, and istio-cni's native nftables table %s is in the node's "+
			"network namespace: nft before %s crashes (segmentation fault) listing or deleting tables once a newer nft, as "+
			"istio-cni's, wrote sets carrying udata there, unless the distribution backported the fix (nftables commit "+
			"be737a1986bf; istio/istio#58492)", h.Path, h.Version, ambienthost.NftTable, NftFixedIn),
		Remedy: "Check with `nft --version` on the node and the distribution's nftables changelog whether the fix is in: many " +
			"distributions backported it into older version numbers (istio/istio#61224). If it is not, update the node's " +
			"nftables package. Only host tooling such as `nft list ruleset` crashes; pods' capture is not affected.",
		Evidence: map[string]any{"path": h.Path, "version": h.Version, "fixedIn": NftFixedIn, "table": ambienthost.NftTable},
	}
}
