package netfilter

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// The node check on a node netns where istio-cni's own code (ambient-inpod --host) wrote its side,
// with this machine's nft (its version from its own --version), an older or a fixed one under the
// host root: NodeNftTooOld (info) only for an old nft beside istio-cni's native table, and the
// version in the detail every time.
func TestCheckNodeHostNft(t *testing.T) {
	testbed.RequirePrivileged(t)
	writer := testbed.AmbientInpod(t)
	newer := []byte(readFile(t, "testdata/nft-1.1.4.rodata"))
	thisNft := func(t *testing.T, root string) { copyHostNft(t, filepath.Join(root, "usr/sbin/nft")) }
	// What this machine's nft says of itself (the test may run it; the product never does) is the
	// oracle for what the reader finds in its bytes, and decides whether it is too old.
	this := nftSaysItsVersion(t)
	thisOld := versionBefore(this, NftFixedIn)
	// An nft before the fix, whatever this machine's is: the bytes of the fixed one, renumbered.
	older := bytes.Replace(newer, []byte("\x001.1.4\x00"), []byte("\x001.0.9\x00"), 1)
	cases := []struct {
		name    string
		nft     func(t *testing.T, root string) // lays an nft under the host root
		args    []string                        // ambient-inpod's flags in the node netns; nil writes nothing
		version string
		table   *bool // what the detail says of istio-cni's native table
		finding bool
	}{
		{name: "this machine's nft beside istio-cni's native table", nft: thisNft, args: []string{"--host", "--native-nftables", "--probe-ips", "10.9.8.7"},
			version: this, table: tableIfOld(thisOld, true), finding: thisOld},
		{name: "this machine's nft, no istio-cni side", nft: thisNft, version: this, table: tableIfOld(thisOld, false)},
		{name: "this machine's nft, istio-cni in iptables mode", nft: thisNft, args: []string{"--host", "--probe-ips", "10.9.8.7"},
			version: this, table: tableIfOld(thisOld, false)},
		{name: "an old nft beside istio-cni's native table", args: []string{"--host", "--native-nftables", "--probe-ips", "10.9.8.7"},
			nft: func(t *testing.T, root string) { writeFile(t, filepath.Join(root, "usr/sbin/nft"), older) }, version: "1.0.9",
			table: ptr(true), finding: true},
		{name: "a fixed nft beside istio-cni's native table", args: []string{"--host", "--native-nftables", "--probe-ips", "10.9.8.7"},
			nft: func(t *testing.T, root string) { writeFile(t, filepath.Join(root, "usr/sbin/nft"), newer) }, version: "1.1.4"},
		{name: "no nft beside istio-cni's native table", nft: func(t *testing.T, root string) {},
			args: []string{"--host", "--native-nftables", "--probe-ips", "10.9.8.7"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			node := testbed.NewNetns(t, testbed.IPv4Only())
			if c.args != nil {
				if err := testbed.WriteAmbientRules(ctx, writer, node.Path(), c.args...); err != nil {
					t.Fatal(err)
				}
			}
			root := t.TempDir()
			c.nft(t, root)
			check := &Check{Reader: Reader{HostRoot: "/"}, HostRoot: root,
				AmbientHost: ambienthost.Reader{NodeNetns: node.Path(), Rules: nsread.Reader{}}}
			res, err := check.CheckNode(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var found []nodecheck.Finding
			for _, f := range res.Findings {
				if f.Code == nodecheck.NodeNftTooOld {
					found = append(found, f)
				}
			}
			if len(found) != len(res.Findings) {
				t.Errorf("findings other than NodeNftTooOld on the test bed: %+v", res.Findings)
			}
			if (len(found) == 1) != c.finding {
				t.Fatalf("NodeNftTooOld %+v, want it %v", found, c.finding)
			}
			if c.finding {
				f := found[0]
				if f.Severity != nodecheck.SeverityInfo || f.Evidence["version"] != c.version || f.Evidence["table"] != ambienthost.NftTable || f.Remedy == "" {
					t.Errorf("finding %+v, want info with version %s and the table", f, c.version)
				}
			}
			d := res.Detail.(Detail)
			if d.HostNft == nil || d.HostNft.Version != c.version {
				t.Fatalf("detail %+v, want version %q", d.HostNft, c.version)
			}
			if (d.HostNft.IstioNativeTable == nil) != (c.table == nil) || c.table != nil && *d.HostNft.IstioNativeTable != *c.table {
				t.Errorf("detail says table %v, want %v (%s)", d.HostNft.IstioNativeTable, c.table, d.HostNft.TableNotRead)
			}
			b, err := json.Marshal(res.Detail)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("detail %s", b)
		})
	}
}

func ptr[T any](v T) *T { return &v }

// tableIfOld is what the detail says of istio-cni's native table: read only for an old nft.
func tableIfOld(old, present bool) *bool {
	if !old {
		return nil
	}
	return ptr(present)
}

// nftSaysItsVersion runs this machine's nft --version ("nftables v1.0.6 (Lester Gooch #5)").
func nftSaysItsVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("/usr/sbin/nft", "--version").Output()
	if err != nil {
		t.Fatalf("the test bed's nft --version: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || !strings.HasPrefix(f[1], "v") {
		t.Fatalf("nft --version said %q", out)
	}
	return strings.TrimPrefix(f[1], "v")
}
