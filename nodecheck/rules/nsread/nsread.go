// Package nsread reads everything the capture check needs from one network namespace.
//
// It reads every place Istio may have written rules: nftables over netlink (iptables-nft and
// Istio's native tables), the legacy xtables tables that exist, the interface addresses
// Istio's writer decides IPv6 capture from, and, with sock_diag, the sockets listening behind
// the rules' redirect ports. It never creates a table, never takes the xtables
// lock, never runs a binary.
package nsread

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nftread"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/xtlegacy"
)

// Reader implements capture.RuleReader for the real kernel. The zero Reader reads everything on
// every call, which is all a one-shot `meshdoctor check` needs; a long-lived caller (the agent,
// re-checking each pod every minute) uses NewCachingReader.
type Reader struct {
	// NFT, when not nil, keeps each namespace's decoded nftables rules and serves a read of a
	// namespace whose ruleset generation has not moved from it (nftread.Cache). The legacy
	// tables, addresses, routing and sockets are always read.
	NFT *nftread.Cache
}

// NewCachingReader returns a Reader with an nftables cache of the default bounds.
func NewCachingReader() Reader { return Reader{NFT: &nftread.Cache{}} }

// ReadRules reads the rule sets of every backend and family, the addresses, the mark routing
// and the listening sockets of netnsPath.
func (r Reader) ReadRules(ctx context.Context, netnsPath string) (rules.Snapshot, error) {
	var snap rules.Snapshot
	// One entry into the pod's namespace for everything: each read opens its socket on this
	// thread, which binds the socket to the namespace; the decoding then runs on plain data.
	err := innetns.Do(ctx, netnsPath, func() error {
		nft, err := r.NFT.ReadHere(ctx, netnsPath)
		if err != nil {
			return fmt.Errorf("reading nftables: %w", err)
		}
		snap.Sets = append(snap.Sets, nft.Sets...)
		legacy, err := xtlegacy.ReadHere(ctx, netnsPath)
		if err != nil {
			return fmt.Errorf("reading iptables-legacy: %w", err)
		}
		snap.Sets = append(snap.Sets, legacy...)
		// One route-netlink socket for the address and policy-routing requests.
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("opening rtnetlink in %s: %w", netnsPath, err)
		}
		defer h.Close()
		if snap.Addrs, err = podAddrs(h); err != nil {
			return fmt.Errorf("listing addresses in %s: %w", netnsPath, err)
		}
		if snap.Routing, err = markRoutes(h); err != nil {
			return fmt.Errorf("reading policy routing in %s: %w", netnsPath, err)
		}
		snap.UDPNotListed = !rules.RedirectsUDP(snap.Sets)
		snap.Listeners, err = listenersHere(ctx, netnsPath, !snap.UDPNotListed)
		return err
	})
	return snap, err
}

// loopbackIndex is the loopback device's index in every network namespace (the kernel creates it
// first, LOOPBACK_IFINDEX).
const loopbackIndex = 1

// podAddrs lists the addresses of the calling thread's namespace in the order the kernel dumps
// them, which is the order Istio's writer sees them in, less the loopback device's (it carries ::6
// once Istio ran with IPv6). One RTM_GETADDR dump.
func podAddrs(h *netlink.Handle) ([]netip.Addr, error) {
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if a.LinkIndex == loopbackIndex || a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// markRoutes lists the calling thread's namespace's policy-routing rules that match a firewall
// mark, in both families, and whether each one's table routes everything to the local host (what
// TPROXY capture needs). One RTM_GETRULE dump with AF_UNSPEC returns the rules of every family
// (fib_nl_dumprule walks each family's rule list in turn), a round trip fewer than one dump per
// family; the IPv4 rules come first, as they did then.
func markRoutes(h *netlink.Handle) ([]rules.MarkRoute, error) {
	list, err := h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing ip rules: %w", err)
	}
	var out []rules.MarkRoute
	for _, fam := range []struct {
		af     int
		family rules.Family
	}{{unix.AF_INET, rules.IPv4}, {unix.AF_INET6, rules.IPv6}} {
		for _, r := range list {
			// The dump also carries the multicast routing families' rules (RTNL_FAMILY_IPMR…).
			if r.Family != fam.af || r.Mark == 0 || r.Table <= 0 {
				continue
			}
			mask := uint32(0xffffffff)
			if r.Mask != nil {
				mask = *r.Mask
			}
			local, err := hasLocalDefault(h, fam.af, r.Table)
			if err != nil {
				return nil, fmt.Errorf("listing %s routes of table %d: %w", fam.family, r.Table, err)
			}
			out = append(out, rules.MarkRoute{Family: fam.family, Mark: r.Mark, Mask: mask, Table: r.Table, LocalDefault: local})
		}
	}
	return out, nil
}

func hasLocalDefault(h *netlink.Handle, af, table int) (bool, error) {
	routes, err := h.RouteListFiltered(af, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL && (r.Dst == nil || isDefault(r.Dst)) {
			return true, nil
		}
	}
	return false, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// NodeBackend tells which iptables backend the node itself writes to, from the rules in the host's
// network namespace (kube-proxy's, the CNI's): the backend holding more rules. It returns "" when
// the host has no iptables rules at all (an nftables-mode kube-proxy, or no kube-proxy).
func NodeBackend(ctx context.Context, hostNetns string) (rules.Backend, error) {
	nft, err := nftread.Read(ctx, hostNetns)
	if err != nil {
		return "", fmt.Errorf("reading the node's nftables: %w", err)
	}
	legacy, err := xtlegacy.Read(ctx, hostNetns)
	if err != nil {
		return "", fmt.Errorf("reading the node's iptables-legacy: %w", err)
	}
	count := map[rules.Backend]int{}
	for _, s := range append(nft.Sets, legacy...) {
		if s.Backend != rules.BackendNative {
			count[s.Backend] += s.RuleCount()
		}
	}
	switch {
	case count[rules.BackendLegacy] == 0 && count[rules.BackendNft] == 0:
		return "", nil
	case count[rules.BackendLegacy] > count[rules.BackendNft]:
		return rules.BackendLegacy, nil
	}
	return rules.BackendNft, nil
}
