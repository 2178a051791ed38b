package nftread

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// recvBufferSize holds any datagram of a dump: the kernel caps a dump's skb at
// SKB_WITH_OVERHEAD(32768) (net/netlink/af_netlink.c), whatever the reader offers.
const recvBufferSize = 32 << 10

// transport exchanges nf_tables requests and replies over the raw descriptor of the netlink
// socket mdlayher/netlink opened in the namespace. mdlayher/netlink's own Receive peeks each
// datagram into a page-sized buffer, doubling it until the datagram fits, before reading it:
// four copies of every rule dump datagram. Here each datagram is one recvmsg into a buffer
// read after read. The descriptor stays under Go's poller, so the socket's deadline (how Read
// honours its context) still interrupts a blocked read.
type transport struct {
	raw syscall.RawConn
	buf []byte // recvBufferSize, made by the first dump
	// small receives the replies of plain GETs (GETGEN's is under a hundred bytes): a read the
	// Cache serves sends nothing else and needs no dump-sized buffer.
	small [512]byte
	seq   uint32
}

// request sends one nf_tables request and returns the payloads of its replies: every message
// of a dump up to NLMSG_DONE, or the single reply of a plain GET.
func (t *transport) request(msgType uint16, flags uint16, family uint8, attrs []byte, reply uint16) ([][]byte, error) {
	t.seq++
	const hdrLen = unix.SizeofNlMsghdr
	msg := make([]byte, hdrLen, hdrLen+4+len(attrs))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(hdrLen+4+len(attrs)))
	ne.PutUint16(msg[4:], unix.NFNL_SUBSYS_NFTABLES<<8|msgType)
	ne.PutUint16(msg[6:], flags)
	ne.PutUint32(msg[8:], t.seq)
	msg = append(msg, family, unix.NFNETLINK_V0, 0, 0)
	msg = append(msg, attrs...)

	var sendErr error
	if err := t.raw.Write(func(fd uintptr) bool {
		sendErr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return sendErr != unix.EAGAIN
	}); err != nil {
		return nil, err
	}
	if sendErr != nil {
		return nil, fmt.Errorf("sending netlink request: %w", sendErr)
	}

	buf := t.small[:]
	if flags&unix.NLM_F_DUMP != 0 {
		if t.buf == nil {
			t.buf = make([]byte, recvBufferSize)
		}
		buf = t.buf
	}
	want := uint16(unix.NFNL_SUBSYS_NFTABLES<<8) | reply
	var out [][]byte
	var interrupted bool
	for {
		var n, recvFlags int
		var recvErr error
		if err := t.raw.Read(func(fd uintptr) bool {
			n, _, recvFlags, _, recvErr = unix.Recvmsg(int(fd), buf, nil, 0)
			return recvErr != unix.EAGAIN
		}); err != nil {
			return nil, err
		}
		if recvErr != nil {
			return nil, fmt.Errorf("receiving netlink reply: %w", recvErr)
		}
		if recvFlags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("netlink reply larger than %d bytes", len(buf))
		}
		// The payloads outlive the buffer, which the next datagram overwrites.
		chunk := append([]byte(nil), buf[:n]...)
		for len(chunk) > 0 {
			if len(chunk) < hdrLen {
				return nil, fmt.Errorf("truncated netlink message header (%d bytes)", len(chunk))
			}
			l := int(ne.Uint32(chunk[0:]))
			typ, mflags, seq := ne.Uint16(chunk[4:]), ne.Uint16(chunk[6:]), ne.Uint32(chunk[8:])
			if l < hdrLen || l > len(chunk) {
				return nil, fmt.Errorf("netlink message length %d outside %d..%d", l, hdrLen, len(chunk))
			}
			body := chunk[hdrLen:l:l]
			chunk = chunk[min((l+3)&^3, len(chunk)):]
			if seq != t.seq {
				continue // the rest of an earlier request that was given up on
			}
			switch typ {
			case unix.NLMSG_DONE:
				if interrupted {
					return nil, errDumpInterrupted
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(body) < 4 {
					return nil, errors.New("truncated netlink error message")
				}
				if errno := int32(ne.Uint32(body)); errno != 0 {
					return nil, syscall.Errno(-errno)
				}
				return out, nil // an acknowledgement
			case want:
				if mflags&unix.NLM_F_DUMP_INTR != 0 {
					// Read on to NLMSG_DONE so the socket holds nothing stale, then report.
					interrupted = true
				}
				out = append(out, body)
				if mflags&unix.NLM_F_MULTI == 0 {
					return out, nil // the single reply of a plain GET
				}
			default:
				return nil, fmt.Errorf("unexpected netlink message type %#x in reply to %#x", typ, msgType)
			}
		}
	}
}
