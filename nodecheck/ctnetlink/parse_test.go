package ctnetlink

import (
	"net/netip"
	"testing"
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

// Whatever ctnetlink sends, the parser answers an Entry or an error, and never panics.
func FuzzParseEntry(f *testing.F) {
	orig := Tuple{Src: netip.MustParseAddrPort("[fd00::5]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::1]:80")}
	f.Add(entryMessage(orig, Tuple{Src: netip.MustParseAddrPort("[::1]:15001"), Dst: orig.Src}, 1, 0, 1))
	f.Add([]byte{2, 0, 0, 0, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseEntry(b)
	})
}
