package nsread

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
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

// listenersHere lists the listening TCP sockets and the bound, unconnected UDP sockets of the
// calling thread's namespace, IPv4 and IPv6, with sock_diag: one dump per protocol and family,
// each asking the kernel only for the state wanted, so a pod's established connections are
// never walked. The socket is opened on this thread (so in its namespace) and closed here.
func listenersHere(where string) ([]rules.Listener, error) {
	conn, err := netlink.Dial(unix.NETLINK_INET_DIAG, nil)
	if err != nil {
		return nil, fmt.Errorf("opening a sock_diag netlink socket in %s: %w", where, err)
	}
	defer conn.Close()
	var out []rules.Listener
	for _, q := range []struct {
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
		msgs, err := conn.Execute(netlink.Message{
			Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
			Data:   inetDiagRequest(q.family, q.ipproto, q.state),
		})
		if err != nil {
			if q.optional && errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("listing %s sockets (family %d) in %s: %w", q.proto, q.family, where, err)
		}
		for _, m := range msgs {
			l, ok, err := parseInetDiagMsg(m.Data, q.proto)
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
