// Package ambienthost reads istio-cni's node side of ambient capture: the probe address sets
// (ipsets istio-inpod-probes-v4 and -v6) holding each enrolled pod's addresses, and the host rule
// that SNATs kubelet's probes to those addresses to 169.254.7.127 (and its IPv6 twin), which the
// pod's in-pod rules let through instead of sending them to ztunnel.
//
// It reads only: the sets over netlink (IPSET_CMD_LIST) and the rules with nodecheck's rule reader,
// in the node's network namespace. istio-cni's native nftables mode keeps the set in an nftables
// table, which is not read here: such a node is reported as not judged.
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
)

// istio-cni's names and addresses (cni/pkg/config, cni/pkg/iptables): the probe sets, the chain
// the host rule is in, and where probes are SNATed to.
const (
	SetV4       = "istio-inpod-probes-v4"
	SetV6       = "istio-inpod-probes-v6"
	HostChain   = "ISTIO_POSTRT"
	ProbeSNATv4 = "169.254.7.127"
	ProbeSNATv6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
)

// RuleReader reads a network namespace's rules (nodecheck/rules/nsread.Reader).
type RuleReader interface {
	ReadRules(ctx context.Context, netnsPath string) (rules.Snapshot, error)
}

// State is istio-cni's node side, per family.
type State struct {
	V4 Family `json:"ipv4"`
	V6 Family `json:"ipv6"`
}

// Family is one family's probe set and host rule.
type Family struct {
	// SetFound: the probe set exists; Members are its addresses.
	SetFound bool         `json:"setFound"`
	Members  []netip.Addr `json:"members,omitempty"`
	// SNATRule is the host rule found ("backend table chain: spec"), empty when there is none.
	SNATRule string `json:"snatRule,omitempty"`
}

// Of is the family of a.
func (s State) Of(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return s.V4
	}
	return s.V6
}

// Reader reads the node's side in NodeNetns.
type Reader struct {
	NodeNetns string
	Rules     RuleReader
}

// Read reads both families' sets and host rules.
func (r Reader) Read(ctx context.Context) (State, error) {
	var st State
	err := innetns.Do(ctx, r.NodeNetns, func() error {
		var err error
		if st.V4.SetFound, st.V4.Members, err = listSet(SetV4); err != nil {
			return err
		}
		st.V6.SetFound, st.V6.Members, err = listSet(SetV6)
		return err
	})
	if err != nil {
		return State{}, fmt.Errorf("reading istio-cni's probe sets in the node's netns %s: %w", r.NodeNetns, err)
	}
	snap, err := r.Rules.ReadRules(ctx, r.NodeNetns)
	if err != nil {
		return State{}, fmt.Errorf("reading the node's rules for istio-cni's probe SNAT: %w", err)
	}
	st.V4.SNATRule = snatRule(snap, rules.IPv4, ProbeSNATv4)
	st.V6.SNATRule = snatRule(snap, rules.IPv6, ProbeSNATv6)
	return st, nil
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

// snatRule finds istio-cni's probe SNAT in the family's nat chain ISTIO_POSTRT, in any backend.
func snatRule(snap rules.Snapshot, fam rules.Family, to string) string {
	for _, s := range snap.Sets {
		if s.Family != fam {
			continue
		}
		for _, t := range s.Tables {
			if t.Name != "nat" {
				continue
			}
			for _, c := range t.Chains {
				if c.Name != HostChain {
					continue
				}
				for _, r := range c.Rules {
					if r.Target.Name == "SNAT" && strings.Contains(r.Target.Args, "--to-source "+to) {
						return fmt.Sprintf("%s %s %s: %s", s.Backend, t.Name, c.Name, r.Spec())
					}
				}
			}
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
