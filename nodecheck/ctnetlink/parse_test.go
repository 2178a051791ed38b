package ctnetlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// An Entry as ctnetlink sends it (the encoder is the one requests use), with the redirect a
// sidecar's REDIRECT makes: the reply comes from 127.0.0.1:15001.
func TestParseEntry(t *testing.T) {
	orig := Tuple{Src: netip.MustParseAddrPort("10.244.1.5:40000"), Dst: netip.MustParseAddrPort("192.0.2.1:80")}
	reply := Tuple{Src: netip.MustParseAddrPort("127.0.0.1:15001"), Dst: orig.Src}
	msg := entryMessage(orig, reply, 8, 0x539, 77)
	e, err := parseEntry(msg)
	if err != nil {
		t.Fatal(err)
	}
	if e.Orig != orig || e.ReplySrc != reply.Src || e.State != 8 || e.Mark != 0x539 || e.ID != 77 {
		t.Errorf("parsed %+v", e)
	}
	if _, err := parseEntry(msg[:len(msg)/2]); err == nil {
		t.Error("an Entry cut in half parsed")
	}
}

func entryMessage(orig, reply Tuple, state uint8, mark, id uint32) []byte {
	b := []byte{2, 0, 0, 0}
	b = tupleAttr(b, ctaTupleOrig, orig)
	b = tupleAttr(b, ctaTupleReply, reply)
	b = attr(b, ctaMark, be32(mark))
	b = attr(b, ctaID, be32(id))
	info := attr(nil, ctaProtoinfoTCPState, []byte{state})
	b = attr(b, ctaProtoinfo|nlaFNested, attr(nil, ctaProtoinfoTCP|nlaFNested, info))
	return b
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// captureEntries asks the kernel for the conntrack entries of real connections, as Get does, and
// returns its messages verbatim: in a fresh namespace where a table makes conntrack track,
// connections over the loopback to listeners, IPv4 and IPv6, and one an nft REDIRECT sent to a
// listener, as a sidecar's rules do. It needs root; without it, it returns nothing.
func captureEntries(tb testing.TB) [][]byte {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Log("not root: no captured conntrack entries")
		return nil
	}
	ctx := context.Background()
	n := testbed.NewNetns(tb)
	ln4, ln6 := "127.0.0.1:15001", "[::1]:15006"
	if err := n.NftScript(ctx, "table ip track {\n chain out {\n  type nat hook output priority -100\n  tcp dport 81 redirect to :15001\n }\n}\n"+
		"table inet count {\n chain out {\n  type filter hook output priority 0\n  ct state new counter\n }\n}"); err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	err := innetns.Do(ctx, n.Path(), func() error {
		c, err := Open(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, l := range []struct{ listen, dial string }{{ln4, ln4}, {ln6, ln6}, {ln4, "127.0.0.1:81"}} {
			ln, err := net.Listen("tcp", l.listen)
			if err != nil && !errors.Is(err, syscall.EADDRINUSE) {
				return err
			}
			if ln != nil {
				defer ln.Close()
			}
			conn, err := net.Dial("tcp", l.dial)
			if err != nil {
				return err
			}
			defer conn.Close()
			t := Tuple{Src: conn.LocalAddr().(*net.TCPAddr).AddrPort(), Dst: netip.MustParseAddrPort(l.dial)}
			msgs, err := c.roundTrip(ipctnlMsgCtGet, 0, t, nil)
			if err != nil {
				return fmt.Errorf("conntrack entry of %v: %w", t, err)
			}
			out = append(out, msgs...)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("capturing conntrack entries: %v", err)
	}
	return out
}

// Whatever ctnetlink sends, the parser answers an Entry or an error, and never panics; an Entry
// it reads, written back as ctnetlink writes it, reads the same. Seeded with the kernel's own
// messages for real connections, a redirected one among them.
func FuzzParseEntry(f *testing.F) {
	captured := captureEntries(f)
	for i, m := range captured {
		e, err := parseEntry(m)
		if err != nil {
			f.Fatalf("captured entry %d: %v", i, err)
		}
		if i == 2 && e.ReplySrc.Port() != 15001 {
			f.Fatalf("the redirected connection's entry %+v does not show the redirect", e)
		}
		f.Add(m)
	}
	orig := Tuple{Src: netip.MustParseAddrPort("[fd00::5]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::1]:80")}
	f.Add(entryMessage(orig, Tuple{Src: netip.MustParseAddrPort("[::1]:15001"), Dst: orig.Src}, 1, 0, 1))
	f.Add([]byte{2, 0, 0, 0, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseEntry(b)
		if err != nil {
			return
		}
		if !e.Orig.Src.IsValid() || !e.Orig.Dst.IsValid() || !e.ReplySrc.IsValid() {
			t.Fatalf("entry %+v without its addresses", e)
		}
		back := entryMessage(e.Orig, Tuple{Src: e.ReplySrc, Dst: e.Orig.Src}, uint8(e.State), e.Mark, e.ID)
		again, err := parseEntry(back)
		if err != nil || again != e {
			t.Fatalf("entry %+v written back reads %+v, %v", e, again, err)
		}
	})
}
