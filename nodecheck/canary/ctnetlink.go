package canary

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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

// TCP conntrack states (enum tcp_conntrack).
const (
	tcpSynSent = 1
	tcpSynRecv = 2
)

var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func tcpStateName(s uint8) string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return fmt.Sprintf("state %d", s)
}

// entry is what a probe needs of a conntrack entry.
type entry struct {
	orig     tuple
	replySrc netip.AddrPort
	state    uint8
	mark     uint32
	id       uint32
}

// conntrack is a ctnetlink socket of the calling thread's namespace, used with plain blocking
// system calls (as nsread's sock_diag socket is, for the same reason), and a second one
// subscribed to the creation of entries.
//
// The events are needed because conntrack deletes at once an entry whose only answer was a reset
// (nf_conntrack_proto_tcp.c): a SYN redirected to a port where nothing listens leaves no entry
// to read, but its creation, with the redirected reply tuple, was announced. The announcement is
// queued on the socket while the SYN is still being sent (at confirmation, in POSTROUTING), so
// it is read without waiting.
type conntrack struct {
	fd, events int
	seq        uint32
	buf        []byte
	// eventsOff: the namespace's nf_conntrack_events is 0, so no creation is announced.
	eventsOff bool
	// lost: the event socket overflowed since the last drain, so an event may be missing.
	lost bool
}

func openConntrack(ctx context.Context) (*conntrack, error) {
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
	ev, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("opening a ctnetlink event socket: %w", err)
	}
	if err := unix.Bind(ev, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (nfnlgrpConntrackNew - 1)}); err != nil {
		unix.Close(fd)
		unix.Close(ev)
		return nil, fmt.Errorf("subscribing to conntrack events (needs CAP_NET_ADMIN): %w", err)
	}
	c := &conntrack{fd: fd, events: ev, buf: make([]byte, replyBufSize)}
	// The thread is in the namespace, so /proc/sys/net shows the namespace's own settings.
	if v, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_events"); err == nil && strings.TrimSpace(string(v)) == "0" {
		c.eventsOff = true
	}
	return c, nil
}

func (c *conntrack) close() {
	unix.Close(c.fd)
	unix.Close(c.events)
}

// drainEvents forgets the events queued so far: they are other connections'.
func (c *conntrack) drainEvents() {
	c.lost = false
	for {
		_, _, _, _, err := unix.Recvmsg(c.events, c.buf, nil, unix.MSG_DONTWAIT)
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			return
		}
	}
}

// created looks among the events queued since the last drain for the creation of the entry
// whose original tuple is t.
func (c *conntrack) created(t tuple) (entry, bool, error) {
	for {
		n, _, _, _, err := unix.Recvmsg(c.events, c.buf, nil, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return entry{}, false, nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			c.lost = true
			continue
		}
		if err != nil {
			return entry{}, false, fmt.Errorf("reading conntrack events: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return entry{}, false, fmt.Errorf("parsing conntrack events: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysCtnetlink<<8|ipctnlMsgCtNew {
				continue
			}
			e, err := parseEntry(m.Data)
			if err != nil {
				return entry{}, false, fmt.Errorf("conntrack event: %w", err)
			}
			if e.orig == t {
				return e, true, nil
			}
		}
	}
}

// get returns the entry whose original tuple is t; found is false when there is none.
func (c *conntrack) get(t tuple) (entry, bool, error) {
	msgs, err := c.roundTrip(ipctnlMsgCtGet, 0, t, nil)
	if errors.Is(err, unix.ENOENT) {
		return entry{}, false, nil
	}
	if err != nil {
		return entry{}, false, fmt.Errorf("reading the conntrack entry of %s -> %s: %w", t.src, t.dst, err)
	}
	if len(msgs) == 0 {
		return entry{}, false, nil
	}
	e, err := parseEntry(msgs[0])
	if err != nil {
		return entry{}, false, fmt.Errorf("reading the conntrack entry of %s -> %s: %w", t.src, t.dst, err)
	}
	return e, true, nil
}

// delete deletes the entry whose original tuple is t, and only if its id is still id.
func (c *conntrack) delete(t tuple, id uint32) error {
	idAttr := binary.BigEndian.AppendUint32(nil, id)
	_, err := c.roundTrip(ipctnlMsgCtDelete, unix.NLM_F_ACK, t, attr(nil, ctaID, idAttr))
	return err
}

// roundTrip sends one request about tuple t (plus extra attributes) and returns the payloads of
// the conntrack messages answered, or the kernel's error.
func (c *conntrack) roundTrip(msgType uint16, flags uint16, t tuple, extra []byte) ([][]byte, error) {
	c.seq++
	family := uint8(unix.AF_INET)
	if t.src.Addr().Is6() {
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

func tupleAttr(b []byte, typ uint16, t tuple) []byte {
	var ip []byte
	if t.src.Addr().Is4() {
		ip = attr(ip, ctaIPv4Src, t.src.Addr().AsSlice())
		ip = attr(ip, ctaIPv4Dst, t.dst.Addr().AsSlice())
	} else {
		ip = attr(ip, ctaIPv6Src, t.src.Addr().AsSlice())
		ip = attr(ip, ctaIPv6Dst, t.dst.Addr().AsSlice())
	}
	var proto []byte
	proto = attr(proto, ctaProtoNum, []byte{unix.IPPROTO_TCP})
	proto = attr(proto, ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, t.src.Port()))
	proto = attr(proto, ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, t.dst.Port()))
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
func parseEntry(m []byte) (entry, error) {
	if len(m) < sizeofNfgen {
		return entry{}, fmt.Errorf("conntrack message of %d bytes", len(m))
	}
	top, err := attrs(m[sizeofNfgen:])
	if err != nil {
		return entry{}, err
	}
	var e entry
	if e.orig, err = parseTuple(top[ctaTupleOrig]); err != nil {
		return entry{}, fmt.Errorf("original tuple: %w", err)
	}
	reply, err := parseTuple(top[ctaTupleReply])
	if err != nil {
		return entry{}, fmt.Errorf("reply tuple: %w", err)
	}
	e.replySrc = reply.src
	if v := top[ctaMark]; len(v) == 4 {
		e.mark = binary.BigEndian.Uint32(v)
	}
	if v := top[ctaID]; len(v) == 4 {
		e.id = binary.BigEndian.Uint32(v)
	}
	if pi, ok := top[ctaProtoinfo]; ok {
		info, err := attrs(pi)
		if err != nil {
			return entry{}, fmt.Errorf("protoinfo: %w", err)
		}
		if tcp, ok := info[ctaProtoinfoTCP]; ok {
			ta, err := attrs(tcp)
			if err != nil {
				return entry{}, fmt.Errorf("TCP protoinfo: %w", err)
			}
			if s := ta[ctaProtoinfoTCPState]; len(s) == 1 {
				e.state = s[0]
			}
		}
	}
	return e, nil
}

// parseTuple reads a nested CTA_TUPLE_* attribute.
func parseTuple(b []byte) (tuple, error) {
	t, err := attrs(b)
	if err != nil {
		return tuple{}, err
	}
	ip, err := attrs(t[ctaTupleIP])
	if err != nil {
		return tuple{}, err
	}
	proto, err := attrs(t[ctaTupleProto])
	if err != nil {
		return tuple{}, err
	}
	var src, dst netip.Addr
	if s, d := ip[ctaIPv4Src], ip[ctaIPv4Dst]; len(s) == 4 && len(d) == 4 {
		src, dst = netip.AddrFrom4([4]byte(s)), netip.AddrFrom4([4]byte(d))
	} else if s, d := ip[ctaIPv6Src], ip[ctaIPv6Dst]; len(s) == 16 && len(d) == 16 {
		src, dst = netip.AddrFrom16([16]byte(s)), netip.AddrFrom16([16]byte(d))
	} else {
		return tuple{}, errors.New("tuple without its addresses")
	}
	sport, dport := proto[ctaProtoSrcPort], proto[ctaProtoDstPort]
	if len(sport) != 2 || len(dport) != 2 {
		return tuple{}, errors.New("tuple without its ports")
	}
	return tuple{
		src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(sport)),
		dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(dport)),
	}, nil
}
