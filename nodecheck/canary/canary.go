// Package canary proves by traffic where a network namespace sends new TCP connections: one SYN
// per probe from a raw socket inside the namespace, and the conntrack entry it made, read back
// and deleted.
//
// A raw SYN is never answered by a socket of ours, so no handshake completes: a proxy listening
// where the rules redirect sees at most a SYN answered by a reset, and accepts nothing. The SYN
// leaves with a TTL (hop limit) of 1, so a SYN the namespace does not redirect dies at the first
// hop. The entry it made is deleted by its id, so conntrack holds exactly what it held before.
package canary

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/ctnetlink"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
)

// Probe is one SYN to send: to Dst, from a socket owned by UID and GID (as the owner match of
// iptables and nft's meta skuid/skgid see it).
type Probe struct {
	Dst netip.AddrPort `json:"dst"`
	UID uint32         `json:"uid"`
	GID uint32         `json:"gid"`
}

// Outcome is what became of one probe.
type Outcome struct {
	Probe Probe `json:"probe"`
	// Src is the address the kernel chose for the destination, with the probe's source port.
	Src netip.AddrPort `json:"src"`
	// Tracked is false when conntrack made no entry for the SYN: the packet was untracked (a
	// NOTRACK rule) or conntrack is not running in the namespace, so no NAT could apply.
	Tracked bool `json:"tracked"`
	// ReplySrc is the source of the entry's reply tuple: where the SYN really went. It is the
	// probe's destination when nothing redirected it, 127.0.0.1 (::1) and the redirect port when
	// a REDIRECT in the output path did.
	ReplySrc netip.AddrPort `json:"replySrc,omitzero"`
	// Gone: the entry no longer existed when read, and its creation event said where the SYN
	// went. Conntrack drops at once a connection answered only by a reset: nothing listened
	// where the SYN was sent.
	Gone bool `json:"gone,omitempty"`
	// State is the TCP state conntrack gave the entry when it was read (SYN_SENT, CLOSE...).
	State string `json:"state,omitempty"`
	// Mark is the entry's connmark.
	Mark uint32 `json:"mark,omitempty"`
	// Answer is what came back to the sender, for an inbound probe (RunInbound) only: a
	// SYN-ACK or a reset when the SYN reached the pod's stack, nothing when it did not.
	Answer Answer `json:"answer,omitempty"`
	// Err says why the probe could not be sent or read (no route to the destination, say);
	// the other fields are then empty.
	Err error `json:"-"`
}

// Redirected says whether conntrack rewrote the SYN's destination.
func (o Outcome) Redirected() bool { return o.Tracked && o.ReplySrc != o.Probe.Dst }

// String is the outcome in a line of evidence.
func (o Outcome) String() string {
	sent := fmt.Sprintf("SYN %s -> %s as uid %d", o.Src, o.Probe.Dst, o.Probe.UID)
	if o.Answer != AnswerNone {
		sent += ", answered by a " + string(o.Answer)
	}
	switch {
	case o.Err != nil:
		return fmt.Sprintf("SYN -> %s as uid %d not sent: %v", o.Probe.Dst, o.Probe.UID, o.Err)
	case !o.Tracked:
		return sent + ": no conntrack entry (untracked)"
	case o.Redirected() && o.Gone:
		return fmt.Sprintf("%s: redirected to %s, answered by a reset (conntrack entry dropped)", sent, o.ReplySrc)
	case o.Redirected():
		return fmt.Sprintf("%s: redirected to %s (conntrack %s)", sent, o.ReplySrc, o.State)
	}
	return fmt.Sprintf("%s: not redirected (conntrack %s)", sent, o.State)
}

// Prober sends probes. The zero value is ready to use.
type Prober struct {
	// Settle bounds how long a redirected SYN's entry is watched for its handshake attempt to end
	// (the target's reset, or ours to its SYN-ACK) before it is deleted; 0 means 20 ms. Deleting
	// earlier would let the last packet of that attempt arrive without an entry.
	Settle time.Duration
}

// Run sends each probe inside the network namespace at netnsPath and returns one Outcome per
// probe, in order. An error is returned only when nothing could be probed (the namespace is
// gone, or conntrack cannot be queried); a probe that fails alone carries its error in its Outcome.
func (p Prober) Run(ctx context.Context, netnsPath string, probes []Probe) ([]Outcome, error) {
	settle := p.Settle
	if settle == 0 {
		settle = 20 * time.Millisecond
	}
	out := make([]Outcome, len(probes))
	err := innetns.Do(ctx, netnsPath, func() error {
		ct, err := ctnetlink.OpenWatching(ctx)
		if err != nil {
			return fmt.Errorf("in %s: %w", netnsPath, err)
		}
		defer ct.Close()
		// The probes of one check mostly share a destination address (the captured one, the
		// proxy's UID to it, an excluded port on it): its route is asked once.
		sources := map[netip.Addr]netip.Addr{}
		for i, pr := range probes {
			if err := ctx.Err(); err != nil {
				return err
			}
			out[i] = probeHere(ct, pr, settle, sources)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("traffic canary: %w", err)
	}
	return out, nil
}

// ephemeral ports a probe's source port is drawn from (Linux's default ip_local_port_range).
const firstEphemeral, lastEphemeral = 32768, 60999

// probeHere sends one probe from the calling thread's namespace and cleans up after it. sources
// keeps the source address found towards each destination address during one visit.
func probeHere(ct *ctnetlink.Conn, pr Probe, settle time.Duration, sources map[netip.Addr]netip.Addr) Outcome {
	o := Outcome{Probe: pr}
	src, ok := sources[pr.Dst.Addr()]
	if !ok {
		var err error
		if src, err = sourceFor(pr.Dst); err != nil {
			o.Err = err
			return o
		}
		sources[pr.Dst.Addr()] = src
	}
	t, err := freeTuple(src, pr.Dst, ct)
	if err != nil {
		o.Err = err
		return o
	}
	o.Src = t.Src
	ct.DrainEvents()
	if err := sendSYN(t, pr.UID, pr.GID); err != nil {
		o.Err = err
		return o
	}
	readEntry(ct, t, settle, &o)
	return o
}

// readEntry reads the entry a SYN for t made in ct's namespace into o, lets a redirected one's
// handshake attempt end (at most settle), and deletes it.
func readEntry(ct *ctnetlink.Conn, t ctnetlink.Tuple, settle time.Duration, o *Outcome) {
	e, found, err := ct.Get(t)
	if err != nil {
		o.Err = err
		return
	}
	if !found {
		// Gone already, or never made: the announcement of its creation tells which.
		e, made, err := ct.Created(t)
		switch {
		case err != nil:
			o.Err = err
		case made:
			o.Tracked, o.Gone, o.ReplySrc, o.State, o.Mark = true, true, e.ReplySrc, e.State.String(), e.Mark
		case ct.EventsUnreliable():
			o.Err = errors.New("the probe's conntrack entry could not be read, and conntrack events are off or were lost: cannot tell whether it was tracked")
		}
		return
	}
	if e.ReplySrc != t.Dst {
		// Redirected: the local target's answer (a reset, or a SYN-ACK our kernel resets) runs
		// through the same entry; let it end so that no packet of it outlives the entry.
		deadline := time.Now().Add(settle)
		for (e.State == ctnetlink.TCPSynSent || e.State == ctnetlink.TCPSynRecv) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Microsecond)
			next, ok, err := ct.Get(t)
			if err != nil || !ok {
				break
			}
			e = next
		}
	}
	o.Tracked, o.ReplySrc, o.State, o.Mark = true, e.ReplySrc, e.State.String(), e.Mark
	if err := ct.Delete(t, e.ID); err != nil && !errors.Is(err, unix.ENOENT) {
		o.Err = fmt.Errorf("deleting the probe's conntrack entry: %w", err)
	}
}

// freeTuple draws a source port towards dst that none of the namespaces' conntrack holds a
// tuple for: such a tuple would be someone's connection.
func freeTuple(src netip.Addr, dst netip.AddrPort, cts ...*ctnetlink.Conn) (ctnetlink.Tuple, error) {
	for attempt := 0; attempt <= 8; attempt++ {
		port := uint16(firstEphemeral + rand.IntN(lastEphemeral-firstEphemeral+1))
		t := ctnetlink.Tuple{Src: netip.AddrPortFrom(src, port), Dst: dst}
		taken := false
		for _, ct := range cts {
			_, found, err := ct.Get(t)
			if err != nil {
				return ctnetlink.Tuple{}, err
			}
			taken = taken || found
		}
		if !taken {
			return t, nil
		}
	}
	return ctnetlink.Tuple{}, errors.New("no free source port for the probe")
}

// sourceFor asks the kernel which source address it would use to reach dst, the way connect()
// on a UDP socket decides it: no packet is sent.
func sourceFor(dst netip.AddrPort) (netip.Addr, error) {
	af := unix.AF_INET
	if dst.Addr().Is6() {
		af = unix.AF_INET6
	}
	fd, err := unix.Socket(af, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("opening a UDP socket to find a route: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sockaddr(dst.Addr(), dst.Port())); err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %s: %w", dst.Addr(), err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reading the source address towards %s: %w", dst.Addr(), err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr), nil
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr), nil
	}
	return netip.Addr{}, fmt.Errorf("source address towards %s of unknown kind %T", dst.Addr(), sa)
}

func sockaddr(a netip.Addr, port uint16) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(port), Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: int(port), Addr: a.As16()}
}
