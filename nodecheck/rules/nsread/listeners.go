package nsread

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Socket states as sock_diag reports them (include/net/tcp_states.h). A bound, unconnected UDP
// socket is in TCP_CLOSE: what `ss -l` shows as UNCONN.
const (
	tcpListen = 10
	tcpClose  = 7
)

// Sizes of the inet_diag request (struct inet_diag_req_v2) and of the fixed part of each reply
// (struct inet_diag_msg), include/uapi/linux/inet_diag.h.
const (
	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
)

// listenersHere lists the listening TCP sockets and, when udp is set, the bound, unconnected UDP
// sockets of the calling thread's namespace, IPv4 and IPv6, with sock_diag: one dump per protocol
// and family (a UDP dump walks the kernel's whole UDP hash table, about as long as both TCP dumps
// together, BenchmarkListeners),
// each asking the kernel only for the state wanted, so a pod's established connections are
// never walked. The socket is opened on this thread (so in its namespace) and closed here.
//
// The socket is a plain blocking one, used with plain system calls: the thread is locked and
// ours alone, and the kernel builds each reply as it is read, so a read blocks only as long as
// the kernel takes. Through a netlink library's poller-driven connection every reply parked the
// locked thread and woke it again, ten times the cost of the dump itself (measured, BenchmarkListeners).
// A receive timeout bounds each read by ctx's deadline nevertheless.
func listenersHere(ctx context.Context, where string, udp bool) ([]rules.Listener, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening a sock_diag netlink socket in %s: %w", where, err)
	}
	defer unix.Close(fd)
	timeout := defaultDumpTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl), time.Millisecond))
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag socket in %s: %w", where, err)
	}
	buf := make([]byte, dumpBufferSize)
	var out []rules.Listener
	for i, q := range []struct {
		proto    rules.Proto
		ipproto  uint8
		family   uint8
		state    uint32
		optional bool // IPv6 may be absent from the kernel
	}{
		{rules.TCP, unix.IPPROTO_TCP, unix.AF_INET, tcpListen, false},
		{rules.TCP, unix.IPPROTO_TCP, unix.AF_INET6, tcpListen, true},
		{rules.UDP, unix.IPPROTO_UDP, unix.AF_INET, tcpClose, false},
		{rules.UDP, unix.IPPROTO_UDP, unix.AF_INET6, tcpClose, true},
	} {
		if q.proto == rules.UDP && !udp {
			continue
		}
		msgs, err := inetDiagDump(fd, buf, uint32(i+1), inetDiagRequest(q.family, q.ipproto, q.state))
		if err != nil {
			if q.optional && errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("listing %s sockets (family %d) in %s: %w", q.proto, q.family, where, err)
		}
		for _, m := range msgs {
			l, ok, err := parseInetDiagMsg(m, q.proto)
			if err != nil {
				return nil, fmt.Errorf("listing %s sockets in %s: %w", q.proto, where, err)
			}
			if ok {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// dumpBufferSize holds any datagram of a dump: the kernel caps a dump's skb at
// SKB_WITH_OVERHEAD(32768) (net/netlink/af_netlink.c), whatever the reader offers.
const dumpBufferSize = 32 << 10

// defaultDumpTimeout bounds a read without a deadline in ctx; the kernel answers at once.
const defaultDumpTimeout = 10 * time.Second

// inetDiagDump sends one SOCK_DIAG_BY_FAMILY dump request over fd and returns the payload of
// every reply up to NLMSG_DONE (copied: buf is reused).
func inetDiagDump(fd int, buf []byte, seq uint32, req []byte) ([][]byte, error) {
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(req))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(req)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(msg[8:], seq)
	msg = append(msg, req...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sending sock_diag request: %w", err)
	}
	var out [][]byte
	for {
		n, _, flags, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil, fmt.Errorf("no sock_diag reply within the deadline: %w", err)
			}
			return nil, fmt.Errorf("reading sock_diag reply: %w", err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("sock_diag reply larger than %d bytes", len(buf))
		}
		var done bool
		out, done, err = dumpReply(out, buf[:n], seq)
		if err != nil || done {
			return out, err
		}
	}
}

// dumpReply reads one datagram of the replies to dump request seq: it appends the payload of
// each reply (copied) to out, and says whether the dump is done (NLMSG_DONE, or an NLMSG_ERROR
// of 0). A reply to another request is skipped; an error reply is the error it carries.
func dumpReply(out [][]byte, datagram []byte, seq uint32) ([][]byte, bool, error) {
	msgs, err := syscall.ParseNetlinkMessage(datagram)
	if err != nil {
		return nil, false, fmt.Errorf("parsing sock_diag reply: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Seq != seq {
			continue // a late reply to an earlier request
		}
		switch m.Header.Type {
		case unix.NLMSG_DONE:
			return out, true, nil
		case unix.NLMSG_ERROR:
			if len(m.Data) < 4 {
				return nil, false, errors.New("short netlink error message")
			}
			if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return nil, false, syscall.Errno(errno)
			}
			return out, true, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			out = append(out, slices.Clone(m.Data))
		}
	}
	return out, false, nil
}

// inetDiagRequest is a struct inet_diag_req_v2 for every socket of the family and protocol in
// state, with no extension requested.
func inetDiagRequest(family, ipproto uint8, state uint32) []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0], b[1] = family, ipproto
	binary.NativeEndian.PutUint32(b[4:], 1<<state)
	return b
}

// parseInetDiagMsg reads the local address and port of one struct inet_diag_msg. A socket bound
// to no port (a UDP socket made and not yet bound) is no listener.
func parseInetDiagMsg(b []byte, proto rules.Proto) (rules.Listener, bool, error) {
	if len(b) < sizeofInetDiagMsg {
		return rules.Listener{}, false, fmt.Errorf("inet_diag message of %d bytes, want at least %d", len(b), sizeofInetDiagMsg)
	}
	// inet_diag_sockid starts at offset 4: source port (big endian), destination port, then
	// source and destination addresses in 16 bytes each.
	port := binary.BigEndian.Uint16(b[4:6])
	if port == 0 {
		return rules.Listener{}, false, nil
	}
	var addr netip.Addr
	switch b[0] {
	case unix.AF_INET:
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	case unix.AF_INET6:
		addr = netip.AddrFrom16([16]byte(b[8:24]))
	default:
		return rules.Listener{}, false, fmt.Errorf("inet_diag message of address family %d", b[0])
	}
	return rules.Listener{Proto: proto, Addr: netip.AddrPortFrom(addr, port)}, true, nil
}
