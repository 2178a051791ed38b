package canary

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/ctnetlink"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
)

// Answer is what came back to the node for an inbound probe's SYN.
type Answer string

// The answers an inbound probe can get: the SYN reached a socket (the proxy's, or the app's when
// nothing redirected it), the pod's kernel refused it, or nothing came back within the settle time.
const (
	AnswerSynAck Answer = "SYN-ACK"
	AnswerReset  Answer = "RST"
	AnswerNone   Answer = ""
)

// RunInbound sends each probe from the network namespace at nodePath (the node's, where the pod
// is reached by its IP) to an address of the pod's namespace at podPath, and reads in the pod's
// conntrack where the SYN went: a REDIRECT in the pod's PREROUTING rewrites its destination to
// the pod's address and the proxy's inbound port. The node's kernel resets the SYN-ACK of
// whatever answers, as no socket of it made the connection, so nothing is accepted; the entries
// the SYN made in both namespaces are deleted.
//
// A probe is sent only where the node's route to its destination has no gateway (the pod's veth
// or bridge): with a TTL of 1, a SYN routed anywhere else would die at the first hop or leave the
// node. Such a probe carries an error saying so.
func (p Prober) RunInbound(ctx context.Context, nodePath, podPath string, probes []Probe) ([]Outcome, error) {
	settle := p.Settle
	if settle == 0 {
		settle = 20 * time.Millisecond
	}
	var pod *ctnetlink.Conn
	err := innetns.Do(ctx, podPath, func() (err error) {
		pod, err = ctnetlink.OpenWatching(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inbound traffic canary: in the pod's netns %s: %w", podPath, err)
	}
	defer pod.Close()
	out := make([]Outcome, len(probes))
	err = innetns.Do(ctx, nodePath, func() error {
		node, err := ctnetlink.Open(ctx)
		if err != nil {
			return fmt.Errorf("in the node's netns %s: %w", nodePath, err)
		}
		defer node.Close()
		for i, pr := range probes {
			if err := ctx.Err(); err != nil {
				return err
			}
			out[i] = inboundHere(node, pod, pr, settle)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inbound traffic canary: %w", err)
	}
	return out, nil
}

// inboundHere sends one probe from the calling thread's namespace (the node's) and judges it in
// the pod's conntrack, then deletes what it made in both.
func inboundHere(node, pod *ctnetlink.Conn, pr Probe, settle time.Duration) Outcome {
	o := Outcome{Probe: pr}
	src, err := directSourceFor(pr.Dst.Addr())
	if err != nil {
		o.Err = err
		return o
	}
	t, err := freeTuple(src, pr.Dst, node, pod)
	if err != nil {
		o.Err = err
		return o
	}
	o.Src = t.Src
	fd, err := synSocket(t, pr.UID, pr.GID, answerFilter(t))
	if err != nil {
		o.Err = err
		return o
	}
	pod.DrainEvents()
	err = sendOn(fd, t)
	if err == nil {
		o.Answer, err = readAnswer(fd, t.Dst.Addr().Is4(), settle)
	}
	unix.Close(fd)
	if err != nil {
		o.Err = err
		return o
	}
	readEntry(pod, t, settle, &o)
	// The node's conntrack, where it runs, tracked the SYN and its answer as a connection of ours.
	if err := node.Forget(t); err != nil && o.Err == nil {
		o.Err = fmt.Errorf("deleting the probe's conntrack entry in the node's netns: %w", err)
	}
	return o
}

// directSourceFor is the node's source address towards a pod's address, when the node's route to
// it has no gateway.
func directSourceFor(dst netip.Addr) (netip.Addr, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route from the node to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route from the node to %s", dst)
	}
	r := routes[0]
	if r.Gw != nil {
		return netip.Addr{}, fmt.Errorf("the node reaches %s through the gateway %s, not a link of the pod: an inbound SYN with a TTL of 1 is not sent there", dst, r.Gw)
	}
	if r.Type == unix.RTN_LOCAL {
		return netip.Addr{}, fmt.Errorf("%s is an address of the node's own netns, not of a pod behind it", dst)
	}
	return sourceFor(netip.AddrPortFrom(dst, 9))
}

// answerFilter keeps only the segments that answer t: from its destination's port to its source
// port. An IPv4 raw socket reads the IP header first; an IPv6 one starts at the TCP header.
func answerFilter(t ctnetlink.Tuple) []unix.SockFilter {
	from, to := uint32(t.Dst.Port()), uint32(t.Src.Port())
	const (
		ldh   = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldhX  = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
		ldxIP = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
	)
	if t.Dst.Addr().Is4() {
		return []unix.SockFilter{
			{Code: ldxIP, K: 0}, // x = IP header length
			{Code: ldhX, K: 0},  // TCP source port
			{Code: jeq, K: from, Jt: 0, Jf: 3},
			{Code: ldhX, K: 2}, // TCP destination port
			{Code: jeq, K: to, Jt: 0, Jf: 1},
			{Code: ret, K: 0xffff},
			{Code: ret, K: 0},
		}
	}
	return []unix.SockFilter{
		{Code: ldh, K: 0},
		{Code: jeq, K: from, Jt: 0, Jf: 3},
		{Code: ldh, K: 2},
		{Code: jeq, K: to, Jt: 0, Jf: 1},
		{Code: ret, K: 0xffff},
		{Code: ret, K: 0},
	}
}

// readAnswer waits at most settle for the first segment answering the SYN and names it.
func readAnswer(fd int, v4 bool, settle time.Duration) (Answer, error) {
	buf := make([]byte, 128)
	deadline := time.Now().Add(settle)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return AnswerNone, nil
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(max(left.Milliseconds(), 1)))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return AnswerNone, fmt.Errorf("waiting for the answer to the canary: %w", err)
		}
		if n == 0 {
			return AnswerNone, nil
		}
		got, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return AnswerNone, fmt.Errorf("reading the answer to the canary: %w", err)
		}
		if a := answerOf(buf[:got], v4); a != AnswerNone {
			return a, nil
		}
	}
}

// answerOf names the segment a raw socket read: an IPv4 packet (v4, IP header first) or an IPv6
// one's TCP segment. A segment too short to hold TCP's flags, or neither a reset nor a SYN-ACK,
// is AnswerNone: not an answer, keep waiting.
func answerOf(pkt []byte, v4 bool) Answer {
	off := 0
	if v4 {
		if len(pkt) < 1 {
			return AnswerNone
		}
		off = int(pkt[0]&0x0f) * 4
	}
	if len(pkt) < off+14 {
		return AnswerNone
	}
	switch flags := pkt[off+13]; {
	case flags&0x04 != 0:
		return AnswerReset
	case flags&0x12 == 0x12:
		return AnswerSynAck
	}
	return AnswerNone
}
