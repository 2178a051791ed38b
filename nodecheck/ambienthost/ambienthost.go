// Package ambienthost reads istio-cni's node side of ambient capture: the probe address sets
// holding each enrolled pod's addresses, and the host rule that SNATs kubelet's probes to those
// addresses to 169.254.7.127 (and its IPv6 twin), which the pod's in-pod rules let through instead
// of sending them to ztunnel. istio-cni keeps them in one of two forms, as its NATIVE_NFTABLES
// setting says: in iptables mode the ipsets istio-inpod-probes-v4/-v6 and a nat ISTIO_POSTRT rule,
// in native nftables mode the table inet istio-ambient-nat with sets of the same names and a
// postrouting chain. Both are read, and State says which exist.
//
// It reads only, in the node's network namespace: the ipsets over netlink (IPSET_CMD_LIST), the
// nftables table and its set elements over netlink (nodecheck/rules/nftread, GET requests only),
// and the iptables rules with nodecheck's rule reader.
package ambienthost

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nftread"
)

// istio-cni's names and addresses (cni/pkg/config, cni/pkg/iptables, cni/pkg/nftables): the probe
// sets, the chain the iptables host rule is in, the native host table (with its sets of the same
// names and its postrouting chain), and where probes are SNATed to.
const (
	SetV4       = "istio-inpod-probes-v4"
	SetV6       = "istio-inpod-probes-v6"
	HostChain   = "ISTIO_POSTRT"
	NftTable    = "inet istio-ambient-nat"
	NftChain    = "postrouting"
	ProbeSNATv4 = "169.254.7.127"
	ProbeSNATv6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
)

// nftChainModel is how nftread names the native table's postrouting base chain (its hook's name).
const nftChainModel = "POSTROUTING"

// RuleReader reads a network namespace's rules (nodecheck/rules/nsread.Reader).
type RuleReader interface {
	ReadRules(ctx context.Context, netnsPath string) (rules.Snapshot, error)
}

// State is istio-cni's node side in both of its forms.
type State struct {
	IPTables Side `json:"iptables"`
	Nftables Side `json:"nftables"`
}

// Side is one form of istio-cni's node side: iptables mode (ipsets and a nat ISTIO_POSTRT rule)
// or native nftables mode (the table inet istio-ambient-nat).
type Side struct {
	// Found: something of this form exists (a probe set or the host rule; for nftables, the table).
	Found bool   `json:"found"`
	V4    Family `json:"ipv4"`
	V6    Family `json:"ipv6"`
}

// Family is one family's probe set and host rule.
type Family struct {
	// Set names the probe set where it is looked for ("ipset istio-inpod-probes-v4",
	// "inet istio-ambient-nat set istio-inpod-probes-v4").
	Set string `json:"set"`
	// SetFound: the probe set exists; Members are its addresses.
	SetFound bool         `json:"setFound"`
	Members  []netip.Addr `json:"members,omitempty"`
	// SNATRule is the host rule found ("backend table chain: spec"), empty when there is none.
	SNATRule string `json:"snatRule,omitempty"`
}

// Of is the family of a.
func (s Side) Of(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return s.V4
	}
	return s.V6
}

// Covers says whether this family's side SNATs kubelet's probes to a: its rule exists and its set
// holds a.
func (f Family) Covers(a netip.Addr) bool {
	if f.SNATRule == "" || !f.SetFound {
		return false
	}
	for _, m := range f.Members {
		if m == a.Unmap() {
			return true
		}
	}
	return false
}

// Reader reads the node's side in NodeNetns.
type Reader struct {
	NodeNetns string
	Rules     RuleReader
}

// Read reads both forms, both families.
func (r Reader) Read(ctx context.Context) (State, error) {
	st := State{
		IPTables: Side{V4: Family{Set: "ipset " + SetV4}, V6: Family{Set: "ipset " + SetV6}},
		Nftables: Side{V4: Family{Set: NftTable + " set " + SetV4}, V6: Family{Set: NftTable + " set " + SetV6}},
	}
	var nft *nftread.Result
	err := innetns.Do(ctx, r.NodeNetns, func() error {
		ipt := &st.IPTables
		var err error
		if ipt.V4.SetFound, ipt.V4.Members, err = listSet(SetV4); err != nil {
			return err
		}
		if ipt.V6.SetFound, ipt.V6.Members, err = listSet(SetV6); err != nil {
			return err
		}
		nft, err = nftread.ReadHere(ctx, r.NodeNetns)
		return err
	})
	if err != nil {
		return State{}, fmt.Errorf("reading istio-cni's probe sets in the node's netns %s: %w", r.NodeNetns, err)
	}
	snap, err := r.Rules.ReadRules(ctx, r.NodeNetns)
	if err != nil {
		return State{}, fmt.Errorf("reading the node's rules for istio-cni's probe SNAT: %w", err)
	}
	ipt := &st.IPTables
	ipt.V4.SNATRule = snatRule(snap.Sets, rules.IPv4, ProbeSNATv4)
	ipt.V6.SNATRule = snatRule(snap.Sets, rules.IPv6, ProbeSNATv6)
	ipt.Found = ipt.V4.SetFound || ipt.V6.SetFound || ipt.V4.SNATRule != "" || ipt.V6.SNATRule != ""
	nftSide(nft, &st.Nftables)
	return st, nil
}

// nftSide fills the native form from what nftread read: the table, its two sets' addresses, and
// the SNAT rules of its postrouting chain.
func nftSide(res *nftread.Result, side *Side) {
	for _, f := range []struct {
		fam  *Family
		rf   rules.Family
		set  string
		snat string
	}{{&side.V4, rules.IPv4, SetV4, ProbeSNATv4}, {&side.V6, rules.IPv6, SetV6, ProbeSNATv6}} {
		if s, ok := res.NamedSet(NftTable, f.set); ok {
			f.fam.SetFound, f.fam.Members = true, s.Addrs()
		}
		f.fam.SNATRule = nftSNATRule(res.Sets, f.rf, f.snat)
	}
	for _, s := range res.Sets {
		for _, t := range s.Tables {
			if t.Origin == NftTable {
				side.Found = true
			}
		}
	}
	side.Found = side.Found || side.V4.SetFound || side.V6.SetFound
}

// listSet lists one ipset of the calling thread's namespace; a set that does not exist is not an error.
func listSet(name string) (bool, []netip.Addr, error) {
	res, err := netlink.IpsetList(name)
	if errors.Is(err, unix.ENOENT) || err != nil && strings.Contains(err.Error(), "no such file") {
		return false, nil, nil
	}
	if err != nil {
		return false, nil, fmt.Errorf("listing ipset %s: %w", name, err)
	}
	var out []netip.Addr
	for _, e := range res.Entries {
		if a, ok := netip.AddrFromSlice(e.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return true, out, nil
}

// snatRule finds istio-cni's probe SNAT in the family's iptables nat chain ISTIO_POSTRT, in any
// iptables backend.
func snatRule(sets []*rules.RuleSet, fam rules.Family, to string) string {
	for _, s := range sets {
		if s.Family != fam || s.Backend == rules.BackendNative {
			continue
		}
		for _, t := range s.Tables {
			if t.Name == "nat" {
				if r := findSNAT(t.Chain(HostChain), to); r != "" {
					return fmt.Sprintf("%s %s %s: %s", s.Backend, t.Name, HostChain, r)
				}
			}
		}
	}
	return ""
}

// nftSNATRule finds istio-cni's probe SNAT in the postrouting chain of its native table.
func nftSNATRule(sets []*rules.RuleSet, fam rules.Family, to string) string {
	for _, s := range sets {
		if s.Family != fam || s.Backend != rules.BackendNative {
			continue
		}
		for _, t := range s.Tables {
			if t.Origin == NftTable {
				if r := findSNAT(t.Chain(nftChainModel), to); r != "" {
					return fmt.Sprintf("%s %s: %s", NftTable, NftChain, r)
				}
			}
		}
	}
	return ""
}

func findSNAT(c *rules.Chain, to string) string {
	if c == nil {
		return ""
	}
	for _, r := range c.Rules {
		if r.Target.Name == "SNAT" && strings.Contains(r.Target.Args+" ", "--to-source "+to+" ") {
			return r.Spec()
		}
	}
	return ""
}

// Cached reads through to Reader at most once per TTL: every ambient pod of a sweep is judged
// against one reading of the node.
type Cached struct {
	Reader Reader
	TTL    time.Duration

	mu   sync.Mutex
	at   time.Time
	st   State
	err  error
	read bool
}

// Read returns the last reading when it is younger than TTL, else reads again.
func (c *Cached) Read(ctx context.Context) (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.read && time.Since(c.at) < c.TTL {
		return c.st, c.err
	}
	c.st, c.err = c.Reader.Read(ctx)
	c.at, c.read = time.Now(), true
	return c.st, c.err
}
