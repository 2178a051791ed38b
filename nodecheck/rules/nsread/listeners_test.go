package nsread

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// The reader lists exactly the namespace's listening TCP and bound UDP sockets, both families,
// and neither a connection nor the host's own listeners; UDP only once a rule matches UDP; it
// leaves no descriptor open.
func TestReadListeners(t *testing.T) {
	ctx := context.Background()
	n := testbed.NewNetns(t)
	var closers []interface{ Close() error }
	t.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
	})
	err := innetns.Do(ctx, n.Path(), func() error {
		for _, l := range []struct{ network, addr string }{
			{"tcp4", "127.0.0.1:15001"}, {"tcp6", "[::]:15008"}, {"tcp", ":15006"},
		} {
			ln, err := net.Listen(l.network, l.addr)
			if err != nil {
				return err
			}
			closers = append(closers, ln)
		}
		for _, l := range []struct{ network, addr string }{{"udp4", "127.0.0.1:15053"}, {"udp6", "[::1]:15053"}} {
			pc, err := net.ListenPacket(l.network, l.addr)
			if err != nil {
				return err
			}
			closers = append(closers, pc)
		}
		// An established connection and a connected UDP socket can receive nothing new.
		c, err := net.Dial("tcp4", "127.0.0.1:15001")
		if err != nil {
			return err
		}
		closers = append(closers, c)
		u, err := net.Dial("udp4", "127.0.0.1:15053")
		if err != nil {
			return err
		}
		closers = append(closers, u)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.Listener{
		{Proto: rules.TCP, Addr: netip.MustParseAddrPort("127.0.0.1:15001")},
		{Proto: rules.TCP, Addr: netip.MustParseAddrPort("[::]:15006")},
		{Proto: rules.TCP, Addr: netip.MustParseAddrPort("[::]:15008")},
		{Proto: rules.UDP, Addr: netip.MustParseAddrPort("127.0.0.1:15053")},
		{Proto: rules.UDP, Addr: netip.MustParseAddrPort("[::1]:15053")},
	}
	// No rule sends UDP anywhere: the UDP sockets are not listed, and the snapshot says so.
	snap := readListeners(t, ctx, n)
	if !snap.UDPNotListed || !slices.Equal(sortedListeners(snap), want[:3]) {
		t.Errorf("without a UDP rule: listeners %v (UDP not listed: %v), want %v and UDP not listed", snap.Listeners, snap.UDPNotListed, want[:3])
	}
	// Once a rule redirects DNS over UDP, the UDP sockets are listed too.
	if err := n.Iptables(ctx, testbed.Nft, testbed.IPv4, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "REDIRECT", "--to-ports", "15053"); err != nil {
		t.Fatal(err)
	}
	snap = readListeners(t, ctx, n)
	if snap.UDPNotListed || !slices.Equal(sortedListeners(snap), want) {
		t.Errorf("with a UDP redirect: listeners %v (UDP not listed: %v), want %v", snap.Listeners, snap.UDPNotListed, want)
	}
}

// readListeners reads n and checks that the read left no descriptor open.
func readListeners(t *testing.T, ctx context.Context, n *testbed.Netns) rules.Snapshot {
	t.Helper()
	fdsBefore := openFDs(t)
	snap, err := Reader{}.ReadRules(ctx, n.Path())
	if err != nil {
		t.Fatal(err)
	}
	for fd, target := range openFDs(t) {
		if fdsBefore[fd] != target {
			t.Errorf("descriptor %s (%s) open after the read, not before", fd, target)
		}
	}
	return snap
}

func sortedListeners(snap rules.Snapshot) []rules.Listener {
	got := slices.Clone(snap.Listeners)
	slices.SortFunc(got, func(a, b rules.Listener) int {
		if a.Proto != b.Proto {
			return map[bool]int{true: -1, false: 1}[a.Proto < b.Proto]
		}
		return a.Addr.Compare(b.Addr)
	})
	return got
}

// openFDs maps this process's open descriptors to what they are ("socket:[inode]"); other
// goroutines of the test bed close theirs at any time, so only a new one says anything.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			out[e.Name()] = target
		}
	}
	return out
}
