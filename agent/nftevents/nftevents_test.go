package nftevents_test

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/agent/nftevents"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

type changes struct {
	mu  sync.Mutex
	all []nftevents.Change
}

func (c *changes) add(ch nftevents.Change) { c.mu.Lock(); c.all = append(c.all, ch); c.mu.Unlock() }
func (c *changes) take() []nftevents.Change {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.all
	c.all = nil
	return out
}

// waitChange waits for a change of key carrying kind; it returns how long after start (the
// change made) it was told.
func waitChange(t *testing.T, seen *changes, start time.Time, key, kind string, within time.Duration) time.Duration {
	t.Helper()
	var got []nftevents.Change
	for time.Since(start) < within {
		for _, c := range seen.take() {
			got = append(got, c)
			if c.Key == key && slices.Contains(c.Kinds, kind) {
				return time.Since(start)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s change of %s within %s; got %+v", kind, key, within, got)
	return 0
}

// Real namespaces with rules written by Istio's own istio-iptables on both backends: a change to
// an iptables-nft or native nftables ruleset is told within milliseconds, an iptables-legacy one
// is not (its rules are not nf_tables objects), one pod's change is told of that pod only, and
// subscribing leaves nothing in the namespace.
func TestChangesAreToldPerPod(t *testing.T) {
	testbed.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	nft, legacy, native := testbed.NewNetns(t), testbed.NewNetns(t), testbed.NewNetns(t)
	if err := nft.IstioIptables(ctx, testbed.DefaultSidecarArgs()...); err != nil {
		t.Fatal(err)
	}
	if err := legacy.IstioIptables(ctx, append(testbed.DefaultSidecarArgs(), "--force-iptables-binary", "legacy")...); err != nil {
		t.Fatal(err)
	}
	if err := native.IstioIptables(ctx, append(testbed.DefaultSidecarArgs(), "--native-nftables")...); err != nil {
		t.Fatal(err)
	}

	seen := &changes{}
	w, err := nftevents.New(seen.add, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.Run(ctx) }()
	for key, n := range map[string]*testbed.Netns{"shop/nft": nft, "shop/legacy": legacy, "shop/native": native} {
		n.Unchanged(ctx, t, "subscribing to its nftables notifications", func() {
			if err := w.Watch(ctx, key, n.Path()); err != nil {
				t.Fatal(err)
			}
		})
	}
	if got := w.Watched(); !slices.Equal(got, []string{"shop/legacy", "shop/native", "shop/nft"}) {
		t.Fatalf("watched %v", got)
	}

	took := []time.Duration{}
	start := time.Now()
	if err := nft.DeleteRule(ctx, testbed.Nft, testbed.IPv4, "nat", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"); err != nil {
		t.Fatal(err)
	}
	took = append(took, waitChange(t, seen, start, "shop/nft", "delrule", 2*time.Second))
	start = time.Now()
	if err := nft.FlushChain(ctx, testbed.Nft, testbed.IPv4, "nat", "ISTIO_OUTPUT"); err != nil {
		t.Fatal(err)
	}
	took = append(took, waitChange(t, seen, start, "shop/nft", "delrule", 2*time.Second))
	start = time.Now()
	if _, err := native.Nft(ctx, "flush", "chain", "inet", "istio-proxy-nat", "istio-output"); err != nil {
		t.Fatal(err)
	}
	took = append(took, waitChange(t, seen, start, "shop/native", "delrule", 2*time.Second))
	t.Logf("change made (the command run, process start included) → told in %v", took)

	if err := legacy.FlushChain(ctx, testbed.Legacy, testbed.IPv4, "nat", "ISTIO_OUTPUT"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range seen.take() {
		t.Errorf("a change told that is no nftables change of its pod: %+v", c)
	}

	// Forgotten, the pod's socket is closed: its changes are not told any more.
	w.Forget("shop/nft")
	if err := nft.FlushChain(ctx, testbed.Nft, testbed.IPv4, "nat", "ISTIO_INBOUND"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := seen.take(); len(got) != 0 {
		t.Errorf("after Forget: %+v", got)
	}
	if got := w.Watched(); !slices.Equal(got, []string{"shop/legacy", "shop/native"}) {
		t.Errorf("watched after Forget %v", got)
	}

	// A namespace that is gone is an error, not a panic; nothing is kept for it.
	gone := testbed.NewNetns(t)
	path := gone.Path()
	if err := gone.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := w.Watch(ctx, "shop/gone", path); err == nil {
		t.Error("watching a vanished namespace gave no error")
	}
	w.Close()
	if got := w.Watched(); len(got) != 0 {
		t.Errorf("after Close: %v", got)
	}
	if err := w.Watch(ctx, "shop/late", native.Path()); err == nil {
		t.Error("Watch after Close gave no error")
	}
}

// Datagrams as the kernel sends them, and junk: each message named, NEWGEN left out, a short or
// lying header ending the datagram without a panic.
func TestMessageKinds(t *testing.T) {
	msg := func(typ uint16, payload int) []byte {
		b := make([]byte, unix.NLMSG_HDRLEN+payload)
		binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
		binary.NativeEndian.PutUint16(b[4:6], typ)
		return b
	}
	nft := func(m uint16) uint16 { return unix.NFNL_SUBSYS_NFTABLES<<8 | m }
	cat := func(bs ...[]byte) []byte { return slices.Concat(bs...) }
	lying := msg(nft(unix.NFT_MSG_DELRULE), 4)
	binary.NativeEndian.PutUint32(lying[0:4], 4096)
	for _, tc := range []struct {
		name string
		data []byte
		want []string
	}{
		{"a rule deleted in one transaction", cat(msg(nft(unix.NFT_MSG_DELRULE), 12), msg(nft(unix.NFT_MSG_NEWGEN), 8)), []string{"delrule"}},
		{"a table written", cat(msg(nft(unix.NFT_MSG_NEWTABLE), 20), msg(nft(unix.NFT_MSG_NEWCHAIN), 20), msg(nft(unix.NFT_MSG_NEWRULE), 36)),
			[]string{"newtable", "newchain", "newrule"}},
		{"an unknown nftables message", msg(nft(200), 0), []string{"msg200"}},
		{"another subsystem", msg(3<<8|1, 4), nil},
		{"empty", nil, nil},
		{"a short header", []byte{1, 2, 3}, nil},
		{"a length past the datagram", lying, nil},
		{"a zero length", make([]byte, 32), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nftevents.MessageKinds(tc.data); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
