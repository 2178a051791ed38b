package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// netnsRunDir is where `ip netns add` bind-mounts named network namespaces.
const netnsRunDir = "/var/run/netns"

// netnsEtcDir is where `ip netns exec` finds per-namespace files to bind-mount over /etc.
const netnsEtcDir = "/etc/netns"

// namePrefix marks the test bed's namespaces, so leftovers are recognisable on a node.
const namePrefix = "md-"

// deleteTimeout bounds cleanup, which runs after the test's own context may be gone.
const deleteTimeout = 30 * time.Second

// DefaultNameserver is the resolver written into each namespace's resolv.conf, a typical
// kube-dns ClusterIP. Istio's DNS capture reads it; a fixed one keeps captures independent of
// the host's /etc/resolv.conf.
const DefaultNameserver = "10.96.0.10"

// Netns is a named network namespace shaped like a pod's: loopback up and an eth0 with the pod
// addresses. eth0 is one end of a veth pair whose peer (eth0peer) also lives inside, because
// Istio refuses a namespace without a non-loopback address and the dummy link type is not
// available on every kernel.
type Netns struct {
	Name string       // e.g. md-1a2b3c4d; the file is Path()
	IPv4 netip.Prefix // eth0's IPv4 address; invalid when the namespace is IPv6-only
	IPv6 netip.Prefix // eth0's IPv6 address; invalid when the namespace is IPv4-only

	tb         testing.TB // set by NewNetns: a missing pilot-agent skips instead of erroring
	pilotAgent string
	bare       bool
	stateDir   string // private xtables lock
	ownsEtc    bool   // we made /etc/netns/NAME, so Delete removes it
	ownsNetns  bool   // we made the namespace, so Delete removes it
	deleteOnce sync.Once
	deleteErr  error
}

// Option changes how a Netns is made.
type Option func(*netnsConfig)

type netnsConfig struct {
	ipv4, ipv6  bool
	nameservers []string
	pilotAgent  string
	bare        bool // loopback only: no eth0, no address, no route
}

// IPv4Only gives eth0 an IPv4 address only, like a pod in a single-stack IPv4 cluster.
func IPv4Only() Option { return func(c *netnsConfig) { c.ipv4, c.ipv6 = true, false } }

// IPv6Only gives eth0 an IPv6 address only: Istio then detects IPv6 by itself.
func IPv6Only() Option { return func(c *netnsConfig) { c.ipv4, c.ipv6 = false, true } }

// WithNameservers replaces DefaultNameserver in the namespace's resolv.conf.
func WithNameservers(addrs ...string) Option {
	return func(c *netnsConfig) { c.nameservers = addrs }
}

// WithPilotAgent sets the pilot-agent binary instead of looking it up (see FindPilotAgent).
func WithPilotAgent(path string) Option { return func(c *netnsConfig) { c.pilotAgent = path } }

// NewNetns creates a dual-stack (unless an option says otherwise) pod-like namespace for the
// test and deletes it when the test ends. It skips the test when not privileged (fails in CI),
// and fails the test when the namespace cannot be made.
func NewNetns(tb testing.TB, opts ...Option) *Netns {
	tb.Helper()
	RequirePrivileged(tb)
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	n, err := Create(ctx, opts...)
	if err != nil {
		tb.Fatalf("testbed: %v", err)
	}
	n.tb = tb
	tb.Cleanup(func() {
		if err := n.Delete(); err != nil {
			tb.Errorf("testbed: %v", err)
		}
	})
	return n
}

// AttachNetns is a Netns for a namespace the test did not make, such as a pod sandbox's
// /var/run/netns/cni-…: its rules can be read, broken and traced like the test bed's own. Only
// its private state (the xtables lock) is removed when the test ends; the namespace is its
// owner's.
func AttachNetns(tb testing.TB, path string) *Netns {
	tb.Helper()
	RequirePrivileged(tb)
	if filepath.Dir(path) != netnsRunDir {
		tb.Fatalf("testbed: %s is not under %s, where ip netns finds namespaces", path, netnsRunDir)
	}
	n := &Netns{Name: filepath.Base(path), tb: tb}
	var err error
	if n.stateDir, err = os.MkdirTemp("", "md-attached-"); err != nil {
		tb.Fatalf("testbed: creating state dir for netns %s: %v", n.Name, err)
	}
	tb.Cleanup(func() {
		if err := n.Delete(); err != nil {
			tb.Errorf("testbed: %v", err)
		}
	})
	return n
}

// Create makes a namespace for callers that are not tests (the capture program). The caller
// must Delete it. On error nothing is left behind.
func Create(ctx context.Context, opts ...Option) (_ *Netns, err error) {
	cfg := netnsConfig{ipv4: true, ipv6: true, nameservers: []string{DefaultNameserver}}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := newNetnsName(cfg)
	if err != nil {
		return nil, err
	}
	n.pilotAgent, n.bare = cfg.pilotAgent, cfg.bare
	if n.stateDir, err = os.MkdirTemp("", n.Name+"-"); err != nil {
		return nil, fmt.Errorf("creating state dir for netns %s: %w", n.Name, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Delete())
		}
	}()
	if err := n.writeResolvConf(cfg.nameservers); err != nil {
		return nil, err
	}
	if err := n.ip(ctx, "netns", "add", n.Name); err != nil {
		return nil, fmt.Errorf("creating netns %s: %w", n.Name, err)
	}
	n.ownsNetns = true
	if err := n.setUpLinks(ctx); err != nil {
		return nil, fmt.Errorf("setting up links in netns %s: %w", n.Name, err)
	}
	return n, nil
}

// newNetnsName picks a random name and matching random pod addresses.
func newNetnsName(cfg netnsConfig) (*Netns, error) {
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, fmt.Errorf("choosing a netns name: %w", err)
	}
	n := &Netns{Name: namePrefix + hex.EncodeToString(r[:])}
	subnet, host := r[0], 2+r[1]%250 // .1 is left for a gateway, as in a pod CIDR
	if cfg.ipv4 {
		n.IPv4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, subnet, host}), 24)
	}
	if cfg.ipv6 {
		n.IPv6 = netip.MustParsePrefix(fmt.Sprintf("fd00:10:244::%x:%x/64", subnet, host))
	}
	return n, nil
}

// writeResolvConf gives the namespace its own /etc/resolv.conf, which `ip netns exec`
// bind-mounts over the host's.
func (n *Netns) writeResolvConf(nameservers []string) error {
	if err := os.MkdirAll(netnsEtcDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", netnsEtcDir, err)
	}
	// Mkdir, not MkdirAll: an existing directory means the name is taken.
	dir := filepath.Join(netnsEtcDir, n.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	n.ownsEtc = true
	var b strings.Builder
	for _, ns := range nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	b.WriteString("search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
	path := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func (n *Netns) setUpLinks(ctx context.Context) error {
	if n.bare {
		return n.ip(ctx, "-n", n.Name, "link", "set", "lo", "up")
	}
	steps := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"},
	}
	// nodad: the address is usable at once; duplicate address detection would leave it
	// "tentative" for a second or two and Istio would not see it.
	if n.IPv4.IsValid() {
		steps = append(steps, []string{"addr", "add", n.IPv4.String(), "dev", "eth0"})
	}
	if n.IPv6.IsValid() {
		steps = append(steps, []string{"-6", "addr", "add", n.IPv6.String(), "dev", "eth0", "nodad"})
	}
	steps = append(steps,
		[]string{"link", "set", "eth0", "up"},
		[]string{"link", "set", "eth0peer", "up"},
	)
	// A default route, as every pod has (Calico's shape: a link-local gateway on eth0), so
	// that traffic Istio does not redirect has somewhere to go, as it does in a pod.
	if n.IPv4.IsValid() {
		steps = append(steps, []string{"route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink"})
	}
	if n.IPv6.IsValid() {
		steps = append(steps, []string{"-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"})
	}
	for _, s := range steps {
		if err := n.ip(ctx, append([]string{"-n", n.Name}, s...)...); err != nil {
			return err
		}
	}
	return nil
}

// ip runs the ip tool in the caller's namespace.
func (n *Netns) ip(ctx context.Context, args ...string) error {
	_, err := command{args: append([]string{"ip"}, args...)}.run(ctx)
	return err
}

// Path is the namespace's file, what a container runtime reports as a pod's netns path.
func (n *Netns) Path() string { return filepath.Join(netnsRunDir, n.Name) }

// xtablesLockEnv points legacy iptables at a lock file of this namespace's own, as istio-init
// has in its container: the host's /run/xtables.lock is never contended.
func (n *Netns) xtablesLockEnv() string {
	return "XTABLES_LOCKFILE=" + filepath.Join(n.stateDir, "xtables.lock")
}

// Exec runs a command inside the namespace with `ip netns exec` and returns its stdout. On
// failure the error is an *ExecError carrying stdout and stderr.
func (n *Netns) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	res, err := n.exec(ctx, nil, name, args...)
	return res.stdout, err
}

func (n *Netns) exec(ctx context.Context, env []string, name string, args ...string) (result, error) {
	argv := append([]string{"ip", "netns", "exec", n.Name, name}, args...)
	env = append([]string{n.xtablesLockEnv()}, env...)
	return command{args: argv, env: env}.run(ctx)
}

// Delete removes the namespace and its files. It is idempotent and safe to call on a partly
// created Netns; NewNetns calls it at cleanup.
func (n *Netns) Delete() error {
	n.deleteOnce.Do(func() { n.deleteErr = n.delete() })
	return n.deleteErr
}

func (n *Netns) delete() error {
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	var errs []error
	if _, err := os.Stat(n.Path()); err == nil && n.ownsNetns {
		// Deleting the namespace also destroys the veth pair inside it.
		if err := n.ip(ctx, "netns", "delete", n.Name); err != nil {
			errs = append(errs, fmt.Errorf("deleting netns %s: %w", n.Name, err))
		}
	}
	if n.ownsEtc {
		if err := os.RemoveAll(filepath.Join(netnsEtcDir, n.Name)); err != nil {
			errs = append(errs, fmt.Errorf("removing netns %s files: %w", n.Name, err))
		}
	}
	if n.stateDir != "" {
		if err := os.RemoveAll(n.stateDir); err != nil {
			errs = append(errs, fmt.Errorf("removing netns %s state: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Node addresses of NodeInFront: Calico's shape, the pod's link-local gateway on the node's end
// of its veth, plus an IPv6 address of the node's own to send from.
var (
	NodeGatewayV4 = netip.MustParseAddr("169.254.1.1")
	NodeAddrV6    = netip.MustParseAddr("fd00:1::1")
)

// AddInterface gives n another interface, name, with the address prefix, the way multus attaches
// a secondary network (net1) beside the pod's eth0: one end of a veth pair whose peer (name+"p")
// stays inside too. It goes with the namespace.
func (n *Netns) AddInterface(tb testing.TB, name string, prefix netip.Prefix) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	addr := []string{"addr", "add", prefix.String(), "dev", name}
	if prefix.Addr().Is6() {
		addr = append(addr, "nodad")
	}
	for _, s := range [][]string{
		{"link", "add", name, "type", "veth", "peer", "name", name + "p"},
		addr,
		{"link", "set", name, "up"},
		{"link", "set", name + "p", "up"},
	} {
		if err := n.ip(ctx, append([]string{"-n", n.Name}, s...)...); err != nil {
			tb.Fatalf("testbed: adding interface %s to %s: %v", name, n.Name, err)
		}
	}
}

// NodeInFront makes a namespace that stands for the node in front of the pod n: n's eth0peer
// moves into it, with the pod's gateway addresses (169.254.1.1, fe80::1), an IPv6 address of its
// own (fd00:1::1) and a route to each pod address through that link, the way a CNI wires a pod
// to its node. Packets from it reach n's eth0 as a node's do. It is deleted when the test ends,
// which gives eth0peer back to no one (the veth pair dies with it).
func (n *Netns) NodeInFront(tb testing.TB) *Netns {
	tb.Helper()
	node := NewNetns(tb, func(c *netnsConfig) { c.ipv4, c.ipv6, c.bare = false, false, true })
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	steps := [][]string{
		{"-n", n.Name, "link", "set", "eth0peer", "netns", node.Name},
		{"-n", node.Name, "link", "set", "eth0peer", "up"},
		{"-n", node.Name, "addr", "add", NodeGatewayV4.String() + "/32", "dev", "eth0peer"},
		{"-n", node.Name, "-6", "addr", "add", "fe80::1/64", "dev", "eth0peer", "nodad"},
		{"-n", node.Name, "-6", "addr", "add", NodeAddrV6.String() + "/128", "dev", "eth0peer", "nodad"},
	}
	if n.IPv4.IsValid() {
		steps = append(steps, []string{"-n", node.Name, "route", "add", n.IPv4.Addr().String() + "/32", "dev", "eth0peer"})
	}
	if n.IPv6.IsValid() {
		steps = append(steps, []string{"-n", node.Name, "-6", "route", "add", n.IPv6.Addr().String() + "/128", "dev", "eth0peer"})
	}
	for _, s := range steps {
		if err := n.ip(ctx, s...); err != nil {
			tb.Fatalf("testbed: wiring node netns %s in front of %s: %v", node.Name, n.Name, err)
		}
	}
	return node
}
