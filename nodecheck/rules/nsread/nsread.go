// Package nsread reads everything the capture check needs from one network namespace, from every
// place Istio may have written rules: nftables over netlink (iptables-nft and Istio's native
// tables), the legacy xtables tables that exist, and the interface addresses Istio's writer decides
// IPv6 capture from. It never creates a table, never takes the xtables lock, never runs a binary.
package nsread

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nftread"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/xtlegacy"
)

// Reader implements capture.RuleReader for the real kernel.
type Reader struct{}

// ReadRules reads the rule sets of every backend and family, and the addresses, of netnsPath.
func (Reader) ReadRules(ctx context.Context, netnsPath string) (capture.Snapshot, error) {
	var snap capture.Snapshot
	nft, err := nftread.Read(ctx, netnsPath)
	if err != nil {
		return snap, fmt.Errorf("reading nftables: %w", err)
	}
	snap.Sets = append(snap.Sets, nft.Sets...)
	legacy, err := xtlegacy.Read(ctx, netnsPath)
	if err != nil {
		return snap, fmt.Errorf("reading iptables-legacy: %w", err)
	}
	snap.Sets = append(snap.Sets, legacy...)
	if snap.Addrs, err = Addrs(ctx, netnsPath); err != nil {
		return snap, err
	}
	if snap.Routing, err = MarkRoutes(ctx, netnsPath); err != nil {
		return snap, err
	}
	return snap, nil
}

// MarkRoutes lists the policy-routing rules that match a firewall mark, in both families, and
// whether each one's table routes everything to the local host (what TPROXY capture needs).
func MarkRoutes(ctx context.Context, netnsPath string) ([]capture.MarkRoute, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ns, err := innetns.Open(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink in %s: %w", netnsPath, err)
	}
	defer h.Close()
	var out []capture.MarkRoute
	for _, fam := range []struct {
		af     int
		family rules.Family
	}{{unix.AF_INET, rules.IPv4}, {unix.AF_INET6, rules.IPv6}} {
		list, err := h.RuleList(fam.af)
		if err != nil {
			return nil, fmt.Errorf("listing %s ip rules in %s: %w", fam.family, netnsPath, err)
		}
		for _, r := range list {
			if r.Mark == 0 || r.Table <= 0 {
				continue
			}
			mask := uint32(0xffffffff)
			if r.Mask != nil {
				mask = *r.Mask
			}
			local, err := hasLocalDefault(h, fam.af, r.Table)
			if err != nil {
				return nil, fmt.Errorf("listing %s routes of table %d in %s: %w", fam.family, r.Table, netnsPath, err)
			}
			out = append(out, capture.MarkRoute{Family: fam.family, Mark: r.Mark, Mask: mask, Table: r.Table, LocalDefault: local})
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

// Addrs lists the namespace's interface addresses in the order the kernel dumps them, which is
// the order Istio's writer sees them in.
func Addrs(ctx context.Context, netnsPath string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := innetns.Do(ctx, netnsPath, func() error {
		// The same dump, in the same order, that Istio's writer reads (net.InterfaceAddrs), less
		// the loopback device's addresses: it carries ::6 once Istio ran with IPv6.
		all, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		onLoopback := map[netip.Addr]bool{}
		ifaces, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagLoopback == 0 {
				continue
			}
			addrs, err := ifc.Addrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if ip, ok := ipOf(a); ok {
					onLoopback[ip] = true
				}
			}
		}
		for _, a := range all {
			if ip, ok := ipOf(a); ok && !onLoopback[ip] {
				out = append(out, ip)
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, innetns.ErrNetnsGone) {
			return nil, err
		}
		return nil, fmt.Errorf("listing addresses in %s: %w", netnsPath, err)
	}
	return out, nil
}

func ipOf(a net.Addr) (netip.Addr, bool) {
	ipn, ok := a.(*net.IPNet)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ipn.IP)
	return ip.Unmap(), ok
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
