package canary

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/ctnetlink"
)

// capturedSegment is one packet a raw TCP socket read on this machine, with what it is.
type capturedSegment struct {
	pkt  []byte
	v4   bool
	want Answer
}

// captureAnswers reads, with raw TCP sockets as readAnswer does, the loopback's answers to a
// connection to a listener (its SYN-ACK) and to a closed port (a RST), IPv4 and IPv6. It needs
// CAP_NET_RAW; without it, it returns nothing.
func captureAnswers(tb testing.TB) []capturedSegment {
	tb.Helper()
	var out []capturedSegment
	for _, fam := range []struct {
		af   int
		addr string
	}{{unix.AF_INET, "127.0.0.1"}, {unix.AF_INET6, "::1"}} {
		fd, err := unix.Socket(fam.af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EAFNOSUPPORT) {
			tb.Logf("no raw TCP socket (%v): no captured answers", err)
			return out
		}
		if err != nil {
			tb.Fatal(err)
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			tb.Fatal(err)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(fam.addr, "0"))
		if err != nil {
			unix.Close(fd)
			tb.Logf("no %s listener (%v): no captured answers", fam.addr, err)
			continue
		}
		open := uint16(ln.Addr().(*net.TCPAddr).Port)
		closedLn, err := net.Listen("tcp", net.JoinHostPort(fam.addr, "0"))
		if err != nil {
			tb.Fatal(err)
		}
		closed := uint16(closedLn.Addr().(*net.TCPAddr).Port)
		closedLn.Close()
		if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			c.Close()
		}
		if c, err := net.DialTimeout("tcp", closedLn.Addr().String(), time.Second); err == nil {
			c.Close()
		}
		ln.Close()
		v4 := fam.af == unix.AF_INET
		buf := make([]byte, 128)
		for got := 0; got < 2; {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				break // the timeout: whatever came has been read
			}
			pkt := append([]byte(nil), buf[:n]...)
			off := 0
			if v4 {
				off = int(pkt[0]&0x0f) * 4
			}
			if len(pkt) < off+14 {
				continue
			}
			src := binary.BigEndian.Uint16(pkt[off:])
			switch {
			case src == open && pkt[off+13]&0x12 == 0x12:
				out = append(out, capturedSegment{pkt, v4, AnswerSynAck})
				got++
			case src == closed && pkt[off+13]&0x04 != 0:
				out = append(out, capturedSegment{pkt, v4, AnswerReset})
				got++
			}
		}
		unix.Close(fd)
	}
	return out
}

// FuzzAnswerOf: whatever a raw socket reads, naming it never panics and gives a reset, a SYN-ACK
// or nothing; only the bytes up to TCP's flags decide it; IPv4's packet and its TCP segment read
// alone say the same; without RST and SYN set it is no answer. Seeded with answers captured on
// this machine's loopback and the probe's own SYN.
func FuzzAnswerOf(f *testing.F) {
	for _, c := range captureAnswers(f) {
		if got := answerOf(c.pkt, c.v4); got != c.want {
			f.Fatalf("captured %x (v4 %v): %q, want %q", c.pkt, c.v4, got, c.want)
		}
		f.Add(c.pkt, c.v4)
	}
	syn := synSegment(ctnetlink.Tuple{Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort("10.0.0.2:8080")}, 1)
	f.Add(syn, false)
	f.Add(append([]byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1}, syn...), true)
	f.Fuzz(func(t *testing.T, pkt []byte, v4 bool) {
		a := answerOf(pkt, v4)
		switch a {
		case AnswerNone, AnswerReset, AnswerSynAck:
		default:
			t.Fatalf("answer %q", a)
		}
		off := 0
		if v4 && len(pkt) > 0 {
			off = int(pkt[0]&0x0f) * 4
		}
		if len(pkt) < off+14 {
			if a != AnswerNone {
				t.Fatalf("%q from %d bytes, too short for TCP's flags at %d", a, len(pkt), off+13)
			}
			return
		}
		if b := answerOf(append(pkt[:off+14:off+14], 0xff, 0x00), v4); b != a {
			t.Fatalf("bytes after TCP's flags changed the answer from %q to %q", a, b)
		}
		if v4 {
			if b := answerOf(pkt[off:], false); b != a {
				t.Fatalf("the IPv4 packet is %q, its TCP segment alone %q", a, b)
			}
		}
		bare := append([]byte(nil), pkt...)
		bare[off+13] &^= 0x06
		if b := answerOf(bare, v4); b != AnswerNone {
			t.Fatalf("%q without RST and SYN", b)
		}
	})
}
