package canary

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/ctnetlink"
)

// sendSYN sends one TCP SYN for t from a raw socket made as uid and gid, on the calling thread.
//
// The socket is never read, and it gets no filter: while it is open (a few system calls) it is
// handed a copy of each TCP segment the namespace receives, which its close frees, and that costs
// far less than attaching a filter, which the kernel compiles for every socket.
func sendSYN(t ctnetlink.Tuple, uid, gid uint32) error {
	fd, err := synSocket(t, uid, gid, nil)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return sendOn(fd, t)
}

// synSocket opens the raw socket a SYN for t is sent from, TTL 1, bound to t's source address.
// With a filter, it keeps only the segments filter accepts, and none is queued when it returns.
func synSocket(t ctnetlink.Tuple, uid, gid uint32, filter []unix.SockFilter) (int, error) {
	af := unix.AF_INET
	if t.Dst.Addr().Is6() {
		af = unix.AF_INET6
	}
	fd, err := rawSocketAs(af, uid, gid)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, err
	}
	if len(filter) > 0 {
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}); err != nil {
			return fail(fmt.Errorf("filtering the canary's raw socket: %w", err))
		}
		// What came in before the filter was attached is no answer to us.
		buf := make([]byte, 1)
		for {
			if _, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT|unix.MSG_TRUNC); err != nil {
				break
			}
		}
	}
	if af == unix.AF_INET {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, 1)
	} else {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 1)
	}
	if err != nil {
		return fail(fmt.Errorf("setting the canary's TTL to 1: %w", err))
	}
	if err := unix.Bind(fd, sockaddr(t.Src.Addr(), 0)); err != nil {
		return fail(fmt.Errorf("binding the canary to %s: %w", t.Src.Addr(), err))
	}
	return fd, nil
}

// sendOn sends the SYN of t on a socket from synSocket.
func sendOn(fd int, t ctnetlink.Tuple) error {
	seg := synSegment(t, rand.Uint32())
	if err := unix.Sendto(fd, seg, 0, sockaddr(t.Dst.Addr(), 0)); err != nil {
		return fmt.Errorf("sending SYN %s -> %s: %w", t.Src, t.Dst, err)
	}
	return nil
}

// rawSocketAs opens a raw TCP socket whose owner, for the owner match and nft's meta skuid and
// skgid, is uid and gid: the socket's file takes the thread's filesystem IDs, which are set for
// the call only (setfsuid is per thread) and put back before returning.
func rawSocketAs(af int, uid, gid uint32) (int, error) {
	prevGID, _ := unix.SetfsgidRetGid(int(gid))
	prevUID, _ := unix.SetfsuidRetUid(int(uid))
	fd, sockErr := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	// setfsuid answers the ID it replaces whether or not it changed it: putting the previous
	// one back tells whether ours had taken.
	gotUID, _ := unix.SetfsuidRetUid(prevUID)
	gotGID, _ := unix.SetfsgidRetGid(prevGID)
	if sockErr != nil {
		return -1, fmt.Errorf("opening a raw TCP socket (needs CAP_NET_RAW): %w", sockErr)
	}
	if gotUID != int(uid) || gotGID != int(gid) {
		unix.Close(fd)
		return -1, fmt.Errorf("cannot send as uid %d gid %d (needs CAP_SETUID and CAP_SETGID)", uid, gid)
	}
	return fd, nil
}

// synSegment is a 20-byte TCP header with only SYN set, its checksum over the pseudo-header of
// t's family (RFC 9293, RFC 8200 section 8.1).
func synSegment(t ctnetlink.Tuple, seq uint32) []byte {
	b := make([]byte, 20)
	be := binary.BigEndian
	be.PutUint16(b[0:], t.Src.Port())
	be.PutUint16(b[2:], t.Dst.Port())
	be.PutUint32(b[4:], seq)
	b[12] = 5 << 4 // data offset: 5 words, no options
	b[13] = 0x02   // SYN
	be.PutUint16(b[14:], 64240)
	be.PutUint16(b[16:], tcpChecksum(t.Src.Addr(), t.Dst.Addr(), b))
	return b
}

func tcpChecksum(src, dst netip.Addr, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
