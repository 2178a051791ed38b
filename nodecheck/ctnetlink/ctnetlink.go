// Package ctnetlink reads and deletes the TCP entries of a network namespace's conntrack table
// over netlink (NETLINK_NETFILTER), and watches their creation. It is what lets meshdoctor's
// own connections in a pod's namespace (the traffic canary's SYNs, the readiness probe) leave the
// table as they found it, and read where conntrack sent a packet.
//
// A Conn belongs to the namespace of the thread that opened it, for its whole life; its calls
// are plain blocking system calls bounded by the deadline given to Open.
package ctnetlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/procfile"
)

// ctnetlink's message types and attributes (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	nfnlSubsysCtnetlink = 1
	ipctnlMsgCtNew      = 0
	ipctnlMsgCtGet      = 1
	ipctnlMsgCtDelete   = 2

	nfnlgrpConntrackNew = 1

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaProtoinfo  = 4
	ctaMark       = 8
	ctaID         = 12

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1

	nlaFNested   = 0x8000
	nlaTypeMask  = 0x3fff
	sizeofNfgen  = 4
	replyBufSize = 8 << 10
)

// TCPState is conntrack's state of a TCP entry (enum tcp_conntrack).
type TCPState uint8

// The states a probe waits on.
const (
	TCPSynSent TCPState = 1
	TCPSynRecv TCPState = 2
)

var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func (s TCPState) String() string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return fmt.Sprintf("state %d", s)
}

// Tuple is a TCP connection's original direction.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// Entry is what meshdoctor reads of a conntrack entry.
type Entry struct {
	Orig Tuple
	// ReplySrc is the source of the reply tuple: where the packet really went (a redirect
	// shows as a local address and port).
	ReplySrc netip.AddrPort
	State    TCPState
	Mark     uint32
	// ID is the entry's id, so that a deletion takes this entry and no later one of the tuple.
	ID uint32
}

// Conn is a ctnetlink socket of the calling thread's namespace, used with plain blocking
// system calls (as nsread's sock_diag socket is, for the same reason), and, when opened by
// OpenWatching, a second one subscribed to the creation of entries.
//
// The events are needed because conntrack deletes at once an entry whose only answer was a reset
// (nf_conntrack_proto_tcp.c): a SYN redirected to a port where nothing listens leaves no entry
// to read, but its creation, with the redirected reply tuple, was announced. The announcement is
// queued on the socket while the SYN is still being sent (at confirmation, in POSTROUTING), so
// it is read without waiting.
type Conn struct {
	fd, events int // events is -1 when not watching
	seq        uint32
	buf        []byte
	// eventsOff: the namespace's nf_conntrack_events is 0, so no creation is announced; read
	// once, when first asked (eventsRead), since only an entry that cannot be found needs it.
	eventsOff, eventsRead bool
	// lost: the event socket overflowed since the last drain, so an event may be missing.
	lost bool
}

// Open opens a ctnetlink socket in the calling thread's network namespace. Its requests wait at
// most until ctx's deadline (5s without one).
func Open(ctx context.Context) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a ctnetlink socket: %w", err)
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl), time.Millisecond))
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ctnetlink socket: %w", err)
	}
	return &Conn{fd: fd, events: -1, buf: make([]byte, replyBufSize)}, nil
}

// OpenWatching is Open plus a subscription to the creation of entries, read by Created.
func OpenWatching(ctx context.Context) (*Conn, error) {
	c, err := Open(ctx)
	if err != nil {
		return nil, err
	}
	ev, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("opening a ctnetlink event socket: %w", err)
	}
	c.events = ev
	if err := unix.Bind(ev, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (nfnlgrpConntrackNew - 1)}); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribing to conntrack events (needs CAP_NET_ADMIN): %w", err)
	}
	return c, nil
}

// EventsUnreliable says that a creation may have gone unannounced since the last DrainEvents:
// the namespace's nf_conntrack_events is 0, or the event socket overflowed. Like OpenWatching, it
// must be called on the thread that is in the connection's namespace: the first call reads the
// namespace's setting from /proc/sys/net, which shows the calling thread's namespace (a sysctl
// lookup costs more than the whole probe's netlink traffic, so only a probe whose entry cannot be
// found pays it).
func (c *Conn) EventsUnreliable() bool {
	if c.lost {
		return true
	}
	if !c.eventsRead {
		c.eventsRead = true
		if v, err := procfile.Read("/proc/sys/net/netfilter/nf_conntrack_events"); err == nil && strings.TrimSpace(string(v)) == "0" {
			c.eventsOff = true
		}
	}
	return c.eventsOff
}

// Close closes the sockets.
func (c *Conn) Close() {
	unix.Close(c.fd)
	if c.events >= 0 {
		unix.Close(c.events)
	}
}

// DrainEvents forgets the events queued so far: they are other connections'.
func (c *Conn) DrainEvents() {
	c.lost = false
	if c.events < 0 {
		return
	}
	for {
		_, _, _, _, err := unix.Recvmsg(c.events, c.buf, nil, unix.MSG_DONTWAIT)
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			return
		}
	}
}

// Created looks among the events queued since the last drain for the creation of the entry
// whose original tuple is t.
func (c *Conn) Created(t Tuple) (Entry, bool, error) {
	if c.events < 0 {
		return Entry{}, false, errors.New("conntrack creations are not watched on this socket (opened by Open, not OpenWatching)")
	}
	for {
		n, _, _, _, err := unix.Recvmsg(c.events, c.buf, nil, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return Entry{}, false, nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			c.lost = true
			continue
		}
		if err != nil {
			return Entry{}, false, fmt.Errorf("reading conntrack events: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return Entry{}, false, fmt.Errorf("parsing conntrack events: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysCtnetlink<<8|ipctnlMsgCtNew {
				continue
			}
			e, err := parseEntry(m.Data)
			if err != nil {
				return Entry{}, false, fmt.Errorf("conntrack event: %w", err)
			}
			if e.Orig == t {
				return e, true, nil
			}
		}
	}
}

// Get returns the entry whose original tuple is t; found is false when there is none.
func (c *Conn) Get(t Tuple) (Entry, bool, error) {
	msgs, err := c.roundTrip(ipctnlMsgCtGet, 0, t, nil)
	if errors.Is(err, unix.ENOENT) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("reading the conntrack Entry of %s -> %s: %w", t.Src, t.Dst, err)
	}
	if len(msgs) == 0 {
		return Entry{}, false, nil
	}
	e, err := parseEntry(msgs[0])
	if err != nil {
		return Entry{}, false, fmt.Errorf("reading the conntrack Entry of %s -> %s: %w", t.Src, t.Dst, err)
	}
	return e, true, nil
}

// Delete deletes the entry whose original tuple is t, and only if its id is still id. It
// wraps unix.ENOENT when there is no such entry.
func (c *Conn) Delete(t Tuple, id uint32) error {
	idAttr := binary.BigEndian.AppendUint32(nil, id)
	if _, err := c.roundTrip(ipctnlMsgCtDelete, unix.NLM_F_ACK, t, attr(nil, ctaID, idAttr)); err != nil {
		return fmt.Errorf("deleting the conntrack entry of %s -> %s: %w", t.Src, t.Dst, err)
	}
	return nil
}

// Forget deletes the entry whose original tuple is t, if there is one: for a connection of
// meshdoctor's own, whose source port no one else holds.
func (c *Conn) Forget(t Tuple) error {
	_, err := c.roundTrip(ipctnlMsgCtDelete, unix.NLM_F_ACK, t, nil)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting the conntrack entry of %s -> %s: %w", t.Src, t.Dst, err)
	}
	return nil
}

// roundTrip sends one request about tuple t (plus extra attributes) and returns the payloads of
// the conntrack messages answered, or the kernel's error.
func (c *Conn) roundTrip(msgType uint16, flags uint16, t Tuple, extra []byte) ([][]byte, error) {
	c.seq++
	family := uint8(unix.AF_INET)
	if t.Src.Addr().Is6() {
		family = unix.AF_INET6
	}
	body := []byte{family, 0, 0, 0} // struct nfgenmsg: family, version 0, res_id 0
	body = tupleAttr(body, ctaTupleOrig, t)
	body = append(body, extra...)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	ne.PutUint16(msg[4:], nfnlSubsysCtnetlink<<8|msgType)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|flags)
	ne.PutUint32(msg[8:], c.seq)
	msg = append(msg, body...)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sending ctnetlink request: %w", err)
	}
	var out [][]byte
	for {
		n, _, _, _, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil, fmt.Errorf("no ctnetlink reply within the deadline: %w", err)
			}
			return nil, fmt.Errorf("reading ctnetlink reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("parsing ctnetlink reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq {
				continue
			}
			if m.Header.Type == unix.NLMSG_ERROR {
				if len(m.Data) < 4 {
					return nil, errors.New("short netlink error message")
				}
				if errno := -int32(ne.Uint32(m.Data)); errno != 0 {
					return nil, syscall.Errno(errno)
				}
				return out, nil // the ack
			}
			if m.Header.Type == unix.NLMSG_DONE {
				return out, nil
			}
			out = append(out, m.Data)
			if flags&unix.NLM_F_ACK == 0 {
				return out, nil // a GET answers with one message and no ack
			}
		}
	}
}

// attr appends one netlink attribute, padded to 4 bytes.
func attr(b []byte, typ uint16, payload []byte) []byte {
	ne := binary.NativeEndian
	b = ne.AppendUint16(b, uint16(4+len(payload)))
	b = ne.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func tupleAttr(b []byte, typ uint16, t Tuple) []byte {
	var ip []byte
	if t.Src.Addr().Is4() {
		ip = attr(ip, ctaIPv4Src, t.Src.Addr().AsSlice())
		ip = attr(ip, ctaIPv4Dst, t.Dst.Addr().AsSlice())
	} else {
		ip = attr(ip, ctaIPv6Src, t.Src.Addr().AsSlice())
		ip = attr(ip, ctaIPv6Dst, t.Dst.Addr().AsSlice())
	}
	var proto []byte
	proto = attr(proto, ctaProtoNum, []byte{unix.IPPROTO_TCP})
	proto = attr(proto, ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, t.Src.Port()))
	proto = attr(proto, ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, t.Dst.Port()))
	var nested []byte
	nested = attr(nested, ctaTupleIP|nlaFNested, ip)
	nested = attr(nested, ctaTupleProto|nlaFNested, proto)
	return attr(b, typ|nlaFNested, nested)
}

// attrs splits a run of netlink attributes into type (without flags) and payload.
func attrs(b []byte) (map[uint16][]byte, error) {
	out := map[uint16][]byte{}
	ne := binary.NativeEndian
	for len(b) >= 4 {
		l := int(ne.Uint16(b))
		if l < 4 || l > len(b) {
			return nil, fmt.Errorf("netlink attribute of length %d in %d bytes", l, len(b))
		}
		out[ne.Uint16(b[2:])&nlaTypeMask] = b[4:l]
		next := (l + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return out, nil
}

// parseEntry reads a conntrack message's tuples, TCP state, mark and id.
func parseEntry(m []byte) (Entry, error) {
	if len(m) < sizeofNfgen {
		return Entry{}, fmt.Errorf("conntrack message of %d bytes", len(m))
	}
	top, err := attrs(m[sizeofNfgen:])
	if err != nil {
		return Entry{}, err
	}
	var e Entry
	if e.Orig, err = parseTuple(top[ctaTupleOrig]); err != nil {
		return Entry{}, fmt.Errorf("original Tuple: %w", err)
	}
	reply, err := parseTuple(top[ctaTupleReply])
	if err != nil {
		return Entry{}, fmt.Errorf("reply Tuple: %w", err)
	}
	e.ReplySrc = reply.Src
	if v := top[ctaMark]; len(v) == 4 {
		e.Mark = binary.BigEndian.Uint32(v)
	}
	if v := top[ctaID]; len(v) == 4 {
		e.ID = binary.BigEndian.Uint32(v)
	}
	if pi, ok := top[ctaProtoinfo]; ok {
		info, err := attrs(pi)
		if err != nil {
			return Entry{}, fmt.Errorf("protoinfo: %w", err)
		}
		if tcp, ok := info[ctaProtoinfoTCP]; ok {
			ta, err := attrs(tcp)
			if err != nil {
				return Entry{}, fmt.Errorf("TCP protoinfo: %w", err)
			}
			if s := ta[ctaProtoinfoTCPState]; len(s) == 1 {
				e.State = TCPState(s[0])
			}
		}
	}
	return e, nil
}

// parseTuple reads a nested CTA_TUPLE_* attribute.
func parseTuple(b []byte) (Tuple, error) {
	t, err := attrs(b)
	if err != nil {
		return Tuple{}, err
	}
	ip, err := attrs(t[ctaTupleIP])
	if err != nil {
		return Tuple{}, err
	}
	proto, err := attrs(t[ctaTupleProto])
	if err != nil {
		return Tuple{}, err
	}
	var src, dst netip.Addr
	if s, d := ip[ctaIPv4Src], ip[ctaIPv4Dst]; len(s) == 4 && len(d) == 4 {
		src, dst = netip.AddrFrom4([4]byte(s)), netip.AddrFrom4([4]byte(d))
	} else if s, d := ip[ctaIPv6Src], ip[ctaIPv6Dst]; len(s) == 16 && len(d) == 16 {
		src, dst = netip.AddrFrom16([16]byte(s)), netip.AddrFrom16([16]byte(d))
	} else {
		return Tuple{}, errors.New("tuple without its addresses")
	}
	sport, dport := proto[ctaProtoSrcPort], proto[ctaProtoDstPort]
	if len(sport) != 2 || len(dport) != 2 {
		return Tuple{}, errors.New("tuple without its ports")
	}
	return Tuple{
		Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(sport)),
		Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(dport)),
	}, nil
}
