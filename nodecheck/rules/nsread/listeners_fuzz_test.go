package nsread

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// capturedDump is one datagram the kernel sent in answer to a sock_diag dump request.
type capturedDump struct {
	datagram []byte
	seq      uint32
	udp      bool
}

// captureDumps runs the reader's four sock_diag dumps in a fresh namespace where ztunnel's in-pod
// listeners stand (as TestReadListeners has them) and returns every datagram the kernel answered
// with, verbatim. It needs root; without it, it returns nothing.
func captureDumps(tb testing.TB) []capturedDump {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Log("not root: no captured sock_diag replies")
		return nil
	}
	n := testbed.NewNetns(tb)
	var out []capturedDump
	err := innetns.Do(context.Background(), n.Path(), func() error {
		for _, l := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:15001"}, {"tcp6", "[::]:15008"}, {"tcp", ":15006"}} {
			ln, err := net.Listen(l.network, l.addr)
			if err != nil {
				return err
			}
			defer ln.Close()
		}
		for _, l := range []struct{ network, addr string }{{"udp4", "127.0.0.1:15053"}, {"udp6", "[::1]:15053"}} {
			pc, err := net.ListenPacket(l.network, l.addr)
			if err != nil {
				return err
			}
			defer pc.Close()
		}
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		buf := make([]byte, dumpBufferSize)
		for i, q := range []struct {
			ipproto, family uint8
			state           uint32
		}{
			{unix.IPPROTO_TCP, unix.AF_INET, tcpListen}, {unix.IPPROTO_TCP, unix.AF_INET6, tcpListen},
			{unix.IPPROTO_UDP, unix.AF_INET, tcpClose}, {unix.IPPROTO_UDP, unix.AF_INET6, tcpClose},
		} {
			req := inetDiagRequest(q.family, q.ipproto, q.state)
			seq := uint32(i + 1)
			msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(req))
			binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)+len(req)))
			binary.NativeEndian.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
			binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
			binary.NativeEndian.PutUint32(msg[8:], seq)
			if err := unix.Sendto(fd, append(msg, req...), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
				return err
			}
			for done := false; !done; {
				n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
				if err != nil {
					return err
				}
				out = append(out, capturedDump{bytes.Clone(buf[:n]), seq, q.ipproto == unix.IPPROTO_UDP})
				if _, done, err = dumpReply(nil, buf[:n], seq); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("capturing sock_diag replies: %v", err)
	}
	return out
}

// FuzzDumpReply: whatever datagram comes back on the sock_diag socket, reading it never panics;
// an error gives no payload and does not end the dump; the payloads are copies, within the
// datagram, appended after what was read before; each is an inet_diag message of an address
// family, or an error saying what it is, and a listener read from one, written back, reads the
// same. Seeded with the kernel's replies to the reader's own dumps in a namespace with ztunnel's
// listeners.
func FuzzDumpReply(f *testing.F) {
	captured := captureDumps(f)
	listeners := 0
	for _, c := range captured {
		f.Add(c.datagram, c.seq, c.udp)
		msgs, _, err := dumpReply(nil, c.datagram, c.seq)
		if err != nil {
			f.Fatalf("captured reply: %v", err)
		}
		listeners += len(msgs)
	}
	if len(captured) > 0 && listeners != 5 {
		f.Fatalf("the captured replies hold %d sockets, want the 5 listening", listeners)
	}
	// NLMSG_DONE alone, and an error reply (ENOENT: no IPv6 in the kernel).
	done := make([]byte, 20)
	binary.NativeEndian.PutUint32(done[0:], 20)
	binary.NativeEndian.PutUint16(done[4:], unix.NLMSG_DONE)
	binary.NativeEndian.PutUint32(done[8:], 1)
	f.Add(done, uint32(1), false)
	nack := bytes.Clone(done)
	binary.NativeEndian.PutUint16(nack[4:], unix.NLMSG_ERROR)
	errno := -int32(unix.ENOENT)
	binary.NativeEndian.PutUint32(nack[16:], uint32(errno))
	f.Add(nack, uint32(1), true)

	prev := []byte("read before")
	f.Fuzz(func(t *testing.T, datagram []byte, seq uint32, udp bool) {
		dg := bytes.Clone(datagram)
		out, done, err := dumpReply([][]byte{prev}, dg, seq)
		if err != nil {
			if out != nil || done {
				t.Fatalf("error %v with %d payloads, done %v", err, len(out), done)
			}
			return
		}
		if len(out) == 0 || !bytes.Equal(out[0], prev) {
			t.Fatalf("what was read before is lost: %q", out)
		}
		out = out[1:]
		total := 0
		for _, p := range out {
			total += unix.SizeofNlMsghdr + len(p)
		}
		if total > len(datagram) {
			t.Fatalf("%d payloads of %d bytes with their headers from a %d-byte datagram", len(out), total, len(datagram))
		}
		clear(dg) // the payloads must not alias the reused buffer
		proto := rules.TCP
		if udp {
			proto = rules.UDP
		}
		for _, p := range out {
			if !bytes.Contains(datagram, p) {
				t.Fatalf("payload %x is not in the datagram or was overwritten", p)
			}
			l, ok, err := parseInetDiagMsg(p, proto)
			if err != nil {
				if len(p) >= sizeofInetDiagMsg && (p[0] == unix.AF_INET || p[0] == unix.AF_INET6) {
					t.Fatalf("error %v for a %d-byte message of family %d", err, len(p), p[0])
				}
				continue
			}
			if !ok {
				if binary.BigEndian.Uint16(p[4:]) != 0 {
					t.Fatalf("a socket with port %d is no listener", binary.BigEndian.Uint16(p[4:]))
				}
				continue
			}
			if l.Proto != proto || l.Addr.Port() == 0 || l.Addr.Addr().Is4() != (p[0] == unix.AF_INET) {
				t.Fatalf("listener %v from family %d", l, p[0])
			}
			back := make([]byte, sizeofInetDiagMsg)
			back[0] = unix.AF_INET6
			if l.Addr.Addr().Is4() {
				back[0] = unix.AF_INET
			}
			binary.BigEndian.PutUint16(back[4:], l.Addr.Port())
			copy(back[8:], l.Addr.Addr().AsSlice())
			if l2, ok, err := parseInetDiagMsg(back, proto); err != nil || !ok || l2 != l {
				t.Fatalf("listener %v written back reads %v %v %v", l, l2, ok, err)
			}
		}
	})
}
