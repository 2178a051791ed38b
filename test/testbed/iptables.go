package testbed

import (
	"context"
	"fmt"
	"os"
	"strconv"
)

// Backend is an iptables implementation: the same rules land in different kernel tables.
type Backend string

const (
	// Nft is iptables-nft: rules live in nftables tables (`table ip nat`) written through the
	// iptables compatibility layer.
	Nft Backend = "nft"
	// Legacy is iptables-legacy: rules live in the x_tables kernel tables listed in
	// /proc/net/ip_tables_names.
	Legacy Backend = "legacy"
)

// Family is an IP family: iptables and ip6tables keep separate rule sets.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Command is the iptables binary of this backend and family, e.g. ip6tables-legacy.
func (b Backend) Command(f Family) string {
	if f == IPv6 {
		return "ip6tables-" + string(b)
	}
	return "iptables-" + string(b)
}

// SaveCommand is the matching -save binary, e.g. iptables-nft-save.
func (b Backend) SaveCommand(f Family) string { return b.Command(f) + "-save" }

func (b Backend) validate(f Family) error {
	if b != Nft && b != Legacy {
		return fmt.Errorf("unknown iptables backend %q", b)
	}
	if f != IPv4 && f != IPv6 {
		return fmt.Errorf("unknown IP family %d", f)
	}
	return nil
}

// Iptables runs the backend's iptables (or ip6tables) with args inside the namespace, e.g.
// Iptables(ctx, Nft, IPv4, "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT").
// Beware: with the Legacy backend even a read such as `-t nat -S` creates the table.
func (n *Netns) Iptables(ctx context.Context, b Backend, f Family, args ...string) error {
	if err := b.validate(f); err != nil {
		return err
	}
	if _, err := n.exec(ctx, nil, b.Command(f), args...); err != nil {
		return fmt.Errorf("%s in netns %s: %w", b.Command(f), n.Name, err)
	}
	return nil
}

// DeleteRule deletes the first rule of chain that matches rulespec (iptables -D), e.g. the
// jump to ISTIO_INBOUND: DeleteRule(ctx, Nft, IPv4, "nat", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND").
func (n *Netns) DeleteRule(ctx context.Context, b Backend, f Family, table, chain string, rulespec ...string) error {
	return n.Iptables(ctx, b, f, append([]string{"-t", table, "-D", chain}, rulespec...)...)
}

// FlushChain deletes every rule of chain and keeps the (now empty) chain.
func (n *Netns) FlushChain(ctx context.Context, b Backend, f Family, table, chain string) error {
	return n.Iptables(ctx, b, f, "-t", table, "-F", chain)
}

// ReplaceRule replaces rule number num (1-based) of chain with rulespec (iptables -R).
func (n *Netns) ReplaceRule(ctx context.Context, b Backend, f Family, table, chain string, num int, rulespec ...string) error {
	return n.Iptables(ctx, b, f, append([]string{"-t", table, "-R", chain, strconv.Itoa(num)}, rulespec...)...)
}

// RedirectTo rewrites Istio's single-rule redirect chain (ISTIO_REDIRECT or ISTIO_IN_REDIRECT)
// to send TCP to another port: rules that look right but point at a port no proxy listens on.
func (n *Netns) RedirectTo(ctx context.Context, b Backend, f Family, chain string, port int) error {
	return n.ReplaceRule(ctx, b, f, "nat", chain, 1, "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(port))
}

// IptablesSave returns the backend's iptables-save output for a family, all tables. Without -t
// it only dumps tables that exist, so it creates none (unlike `iptables-legacy -t nat -S`).
func (n *Netns) IptablesSave(ctx context.Context, b Backend, f Family) (string, error) {
	if err := b.validate(f); err != nil {
		return "", err
	}
	out, err := n.Exec(ctx, b.SaveCommand(f))
	if err != nil {
		return "", fmt.Errorf("%s in netns %s: %w", b.SaveCommand(f), n.Name, err)
	}
	return string(out), nil
}

// Nft runs nft with args inside the namespace and returns its stdout, for native nftables
// rules, e.g. Nft(ctx, "flush", "chain", "inet", "istio-proxy-nat", "output").
func (n *Netns) Nft(ctx context.Context, args ...string) (string, error) {
	out, err := n.Exec(ctx, "nft", args...)
	if err != nil {
		return "", fmt.Errorf("nft in netns %s: %w", n.Name, err)
	}
	return string(out), nil
}

// NftRuleset returns `nft list ruleset`, or `nft -j list ruleset` when json is true.
func (n *Netns) NftRuleset(ctx context.Context, json bool) (string, error) {
	if json {
		return n.Nft(ctx, "-j", "list", "ruleset")
	}
	return n.Nft(ctx, "list", "ruleset")
}

// NftScript loads an nftables script (`nft -f`) into the namespace: another owner's table.
func (n *Netns) NftScript(ctx context.Context, script string) error {
	f, err := os.CreateTemp("", n.Name+"-*.nft")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(script + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = n.Nft(ctx, "-f", f.Name())
	return err
}
