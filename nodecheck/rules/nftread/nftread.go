// Package nftread reads a network namespace's nftables rules over netlink, in-process.
//
// It reads every nftables rule that matters for Istio's traffic capture and decodes it into
// meshdoctor's rule model: the tables iptables-nft writes (ip/ip6 nat, mangle, raw, filter,
// security, with their xtables-compat match and target expressions) and Istio's native tables
// (inet istio-proxy-nat and friends), renamed to their iptables equivalents so that one expected
// rule set compares against both.
//
// # Why not iptables-nft-save
//
// Why netlink in-process rather than `nsenter … iptables-nft-save`: no process per pod and per
// family (a Read of a dual-stack sidecar pod takes about half a millisecond, the two exec'd
// saves about forty: BenchmarkRead, BenchmarkExecSave), no xtables lock, nothing that could
// create a table, and the native tables, which iptables-save does not show at all. Only GET
// requests are ever sent.
//
// # Why not google/nftables
//
// Why not google/nftables' Conn.GetRules, though its Conn opens its socket in another namespace
// (WithNetNSFd): in v0.3.0 the rule listing silently skips every expression it has no Go type
// for — tproxy and socket among them, exactly what Istio's TPROXY mode writes — and decodes
// `ct mark set …` as a load, so a rule read through it can be shorter than the rule in the
// kernel; it also lists rules one chain per request. Read therefore opens the netlink socket
// the way google/nftables does (github.com/mdlayher/netlink, which enters the namespace on a
// locked thread only to create it), dumps each object kind once, and decodes every expression
// by name itself, turning anything it does not know into a visible MatchOther. google/nftables'
// xt package decodes the xtables-compat structs it covers losslessly (tcp, udp, conntrack); the
// others (owner, multiport, mark, socket, REDIRECT, TPROXY, MARK, CONNMARK, CT) are decoded here
// from linux/netfilter/xt_*.h.
package nftread

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Result is what Read found in one namespace.
type Result struct {
	// Sets holds one RuleSet per backend and family that has at least one table, in the order
	// nft IPv4, nft IPv6, native IPv4, native IPv6. BackendNft sets hold the iptables-nft tables
	// (ip → IPv4, ip6 → IPv6); BackendNative sets hold Istio's "istio-*" tables, with an inet
	// table's rules in both families unless they match an IPv4 or IPv6 header field.
	Sets []*rules.RuleSet
	// OtherTables names the tables that were not read, as "FAMILY NAME" (e.g. "inet filter"),
	// for evidence: something else is filtering in this namespace.
	OtherTables []string
	// NamedSets are the sets of the tables read, with their elements, whether or not a rule
	// looks them up: istio-cni's host probe sets matter even when the rule that uses them is gone.
	NamedSets []NamedSet
}

// NamedSet is one nftables set of a table Read reads.
type NamedSet struct {
	// Table is the set's table as "FAMILY NAME" ("inet istio-ambient-nat").
	Table string
	Name  string
	// Keys are the elements' keys as the kernel holds them (addresses and ports in network byte
	// order), in ascending order; an interval set's keys are its ranges' first keys.
	Keys [][]byte
}

// Addrs returns the set's keys that are IPv4 or IPv6 addresses (a set of type ipv4_addr or
// ipv6_addr holds nothing else).
func (s NamedSet) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, k := range s.Keys {
		if len(k) == 4 || len(k) == 16 {
			if a, ok := netip.AddrFromSlice(k); ok {
				out = append(out, a)
			}
		}
	}
	return out
}

// NamedSet returns the set name of the table "FAMILY NAME", or false when there is none.
func (r *Result) NamedSet(table, name string) (NamedSet, bool) {
	for _, s := range r.NamedSets {
		if s.Table == table && s.Name == name {
			return s, true
		}
	}
	return NamedSet{}, false
}

// Set returns the rule set of a backend and family, or nil when there is none.
func (r *Result) Set(b rules.Backend, f rules.Family) *rules.RuleSet {
	for _, s := range r.Sets {
		if s.Backend == b && s.Family == f {
			return s
		}
	}
	return nil
}

// maxGenerationRetries bounds how often Read starts over when the ruleset changed while it was
// dumping (istio-init writing right now): after that it reports the churn instead of spinning.
const maxGenerationRetries = 3

// Read reads the nftables rules of the network namespace at netnsPath. A path that does not
// exist gives an error wrapping innetns.ErrNetnsGone. Cancelling ctx aborts a pending request.
func Read(ctx context.Context, netnsPath string) (*Result, error) {
	return (*Cache)(nil).Read(ctx, netnsPath)
}

// ReadHere reads the nftables rules of the network namespace the calling thread is in: for a
// caller that has already entered a pod's namespace (innetns.Do) to read several things at once.
// where names the namespace in errors.
func ReadHere(ctx context.Context, where string) (*Result, error) {
	return (*Cache)(nil).ReadHere(ctx, where)
}

// dialIn opens a netfilter netlink socket in the namespace at netnsPath.
func dialIn(ctx context.Context, netnsPath string) (*netlink.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ns, err := innetns.Open(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	// The socket is created inside the namespace on a locked, throwaway-on-failure thread by
	// mdlayher/socket; every later request on it reaches that namespace's nf_tables.
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns)})
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket in %s: %w", netnsPath, err)
	}
	return conn, nil
}

// dialHere opens a netfilter netlink socket in the calling thread's namespace.
func dialHere(ctx context.Context, where string) (*netlink.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Without a NetNS option the socket is created on this thread, so in its namespace.
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket in %s: %w", where, err)
	}
	return conn, nil
}

// readSnapshot fetches the raw dumps of the namespace at netnsPath.
func readSnapshot(ctx context.Context, netnsPath string) (*snapshot, error) {
	conn, err := dialIn(ctx, netnsPath)
	if err != nil {
		return nil, err
	}
	var snap *snapshot
	err = exchange(ctx, conn, netnsPath, func(t *transport, _ syscall.RawConn) error {
		var err error
		snap, err = fetch(t)
		return err
	})
	return snap, err
}

// exchange runs fn with a transport over conn, which it closes afterwards. Cancelling ctx
// interrupts a pending request; fn's error is wrapped with where and, when ctx ended, ctx's
// error rather than the interrupted receive's.
func exchange(ctx context.Context, conn *netlink.Conn, where string, fn func(*transport, syscall.RawConn) error) error {
	defer conn.Close()
	// A deadline in the past wakes a blocked receive at once; netlink has no other way to be
	// interrupted.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket in %s: %w", where, err)
	}
	if err := fn(&transport{raw: raw}, raw); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("reading nftables in %s: %w", where, ctxErr)
		}
		return fmt.Errorf("reading nftables in %s: %w", where, err)
	}
	return nil
}

// snapshot is the raw material of one Read: the payload (nfgenmsg header and attributes) of
// every message of each dump. decode turns it into a Result without touching the kernel, so
// stored snapshots test the decoder.
type snapshot struct {
	Tables, Chains, Rules, Sets, Elems [][]byte
}

// fetch dumps tables and, when any of them is one we read, chains, rules, and, only when a rule
// looks a set up, sets and their elements. The dumps are separate requests, so the ruleset could
// change in between: every reply carries the ruleset generation (its low 16 bits, in
// nfgenmsg.res_id), and a snapshot whose replies all carry the same one is consistent. A dump
// with no reply proves nothing, and then the generation is asked for once at the end. On a
// change fetch starts over.
func fetch(conn *transport) (*snapshot, error) {
	for attempt := 1; ; attempt++ {
		snap, consistent, err := fetchOnce(conn)
		if err != nil && !errors.Is(err, errDumpInterrupted) {
			return nil, err
		}
		if err == nil && consistent {
			return snap, nil
		}
		if attempt >= maxGenerationRetries {
			return nil, fmt.Errorf("the ruleset changed during each of %d reads", maxGenerationRetries)
		}
	}
}

// generations follows the generation the replies of one fetch were made at.
type generations struct {
	gen      uint16
	seen     bool
	changed  bool
	unproven bool // a dump had no reply to carry its generation
}

func (g *generations) observe(msgs [][]byte) {
	if len(msgs) == 0 {
		g.unproven = true
	}
	for _, m := range msgs {
		if len(m) < 4 {
			continue // decode reports it
		}
		id := binary.BigEndian.Uint16(m[2:4])
		switch {
		case !g.seen:
			g.gen, g.seen = id, true
		case id != g.gen:
			g.changed = true
		}
	}
}

var lookupExpr = []byte("lookup\x00")

func fetchOnce(conn *transport) (snap *snapshot, consistent bool, err error) {
	snap = &snapshot{}
	var g generations
	if snap.Tables, err = dump(conn, unix.NFT_MSG_GETTABLE, unix.NFT_MSG_NEWTABLE, unix.NFPROTO_UNSPEC, nil); err != nil {
		return nil, false, fmt.Errorf("listing tables: %w", err)
	}
	tables, err := parseTables(snap.Tables)
	if err != nil {
		return nil, false, err
	}
	if !slices.ContainsFunc(tables, func(t tableInfo) bool { return t.kind != tableOther }) {
		return snap, true, nil // one dump is consistent in itself
	}
	g.observe(snap.Tables)
	if snap.Chains, err = dump(conn, unix.NFT_MSG_GETCHAIN, unix.NFT_MSG_NEWCHAIN, unix.NFPROTO_UNSPEC, nil); err != nil {
		return nil, false, fmt.Errorf("listing chains: %w", err)
	}
	g.observe(snap.Chains)
	if snap.Rules, err = dump(conn, unix.NFT_MSG_GETRULE, unix.NFT_MSG_NEWRULE, unix.NFPROTO_UNSPEC, nil); err != nil {
		return nil, false, fmt.Errorf("listing rules: %w", err)
	}
	g.observe(snap.Rules)
	// iptables-nft never uses sets; Istio's native tables do, for port lists and (istio-cni's
	// host table) probe addresses. Skipping the set dumps when no rule has a lookup and no table
	// is Istio's saves a round trip per set on most pods.
	if slices.ContainsFunc(tables, func(t tableInfo) bool { return t.kind == tableNative }) ||
		slices.ContainsFunc(snap.Rules, func(m []byte) bool { return bytes.Contains(m, lookupExpr) }) {
		if err := fetchSets(conn, snap, tables, &g); err != nil {
			return nil, false, err
		}
	}
	if g.changed {
		return snap, false, nil
	}
	if g.unproven {
		gen, err := generation(conn)
		if err != nil {
			return nil, false, err
		}
		return snap, uint16(gen) == g.gen, nil
	}
	return snap, true, nil
}

func fetchSets(conn *transport, snap *snapshot, tables []tableInfo, g *generations) error {
	var err error
	if snap.Sets, err = dump(conn, unix.NFT_MSG_GETSET, unix.NFT_MSG_NEWSET, unix.NFPROTO_UNSPEC, nil); err != nil {
		return fmt.Errorf("listing sets: %w", err)
	}
	g.observe(snap.Sets)
	sets, err := parseSets(snap.Sets)
	if err != nil {
		return err
	}
	for _, s := range sets {
		if !isRead(tables, s.table) {
			continue
		}
		attrs := marshalAttrs(
			attr{unix.NFTA_SET_ELEM_LIST_TABLE, cstring(s.table.name)},
			attr{unix.NFTA_SET_ELEM_LIST_SET, cstring(s.name)},
		)
		elems, err := dump(conn, unix.NFT_MSG_GETSETELEM, unix.NFT_MSG_NEWSETELEM, s.table.family, attrs)
		if err != nil {
			return fmt.Errorf("listing elements of set %s in %s: %w", s.name, s.table, err)
		}
		g.observe(elems)
		snap.Elems = append(snap.Elems, elems...)
	}
	return nil
}

func isRead(tables []tableInfo, id tableID) bool {
	for _, t := range tables {
		if t.id == id {
			return t.kind != tableOther
		}
	}
	return false
}

// dump sends one nf_tables GET request with the dump flag and returns the payload of every
// reply, each checked to be of the expected type.
func dump(conn *transport, get, reply uint16, family uint8, attrs []byte) ([][]byte, error) {
	return conn.request(get, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family, attrs, reply)
}

var errDumpInterrupted = errors.New("the kernel interrupted the dump because the ruleset changed")

// generation returns the nf_tables ruleset generation, which every committed change increments.
func generation(conn *transport) (uint32, error) {
	msgs, err := conn.request(unix.NFT_MSG_GETGEN, unix.NLM_F_REQUEST, unix.NFPROTO_UNSPEC, nil, unix.NFT_MSG_NEWGEN)
	if err != nil {
		return 0, fmt.Errorf("reading the ruleset generation: %w", err)
	}
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		a := attrIter{b: m[4:]}
		for a.next() {
			if a.typ == unix.NFTA_GEN_ID {
				return a.u32()
			}
		}
		if a.err != nil {
			return 0, fmt.Errorf("reading the ruleset generation: %w", a.err)
		}
	}
	return 0, errors.New("reading the ruleset generation: no NFTA_GEN_ID in the reply")
}

// attr is one netlink attribute to marshal.
type attr struct {
	typ  uint16
	data []byte
}

// marshalAttrs encodes request attributes (host-order headers, 4-byte aligned).
func marshalAttrs(as ...attr) []byte {
	var b []byte
	for _, a := range as {
		l := 4 + len(a.data)
		b = binary.NativeEndian.AppendUint16(b, uint16(l))
		b = binary.NativeEndian.AppendUint16(b, a.typ)
		b = append(b, a.data...)
		for l%4 != 0 {
			b = append(b, 0)
			l++
		}
	}
	return b
}

func cstring(s string) []byte { return append([]byte(s), 0) }
