package netfilter

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/ambienthost"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// The node check on a node netns where istio-cni's own code (ambient-inpod --host) wrote its side,
// with this machine's nft (1.0.6) or a newer one under the host root: NodeNftTooOld (info) only for
// an old nft beside istio-cni's native table, and the version in the detail every time.
func TestCheckNodeHostNft(t *testing.T) {
	testbed.RequirePrivileged(t)
	writer := testbed.AmbientInpod(t)
	newer := []byte(readFile(t, "testdata/nft-1.1.4.rodata"))
	thisNft := func(t *testing.T, root string) { copyHostNft(t, filepath.Join(root, "usr/sbin/nft")) }
	cases := []struct {
		name    string
		nft     func(t *testing.T, root string) // lays an nft under the host root
		args    []string                        // ambient-inpod's flags in the node netns; nil writes nothing
		version string
		table   *bool // what the detail says of istio-cni's native table
		finding bool
	}{
		{name: "an old nft beside istio-cni's native table", nft: thisNft, args: []string{"--host", "--native-nftables", "--probe-ips", "10.9.8.7"},
			version: "1.0.6", table: ptr(true), finding: true},
		{name: "an old nft, no istio-cni side", nft: thisNft, version: "1.0.6", table: ptr(false)},
		{name: "an old nft, istio-cni in iptables mode", nft: thisNft, args: []string{"--host", "--probe-ips", "10.9.8.7"},
			version: "1.0.6", table: ptr(false)},
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
