package canary

import (
	"net/netip"
	"testing"
)

// An entry as ctnetlink sends it (the encoder is the one requests use), with the redirect a
// sidecar's REDIRECT makes: the reply comes from 127.0.0.1:15001.
func TestParseEntry(t *testing.T) {
	orig := tuple{src: netip.MustParseAddrPort("10.244.1.5:40000"), dst: netip.MustParseAddrPort("192.0.2.1:80")}
	reply := tuple{src: netip.MustParseAddrPort("127.0.0.1:15001"), dst: orig.src}
	msg := entryMessage(orig, reply, 8, 0x539, 77)
	e, err := parseEntry(msg)
	if err != nil {
		t.Fatal(err)
	}
	if e.orig != orig || e.replySrc != reply.src || e.state != 8 || e.mark != 0x539 || e.id != 77 {
		t.Errorf("parsed %+v", e)
	}
	if _, err := parseEntry(msg[:len(msg)/2]); err == nil {
		t.Error("an entry cut in half parsed")
	}
}

func entryMessage(orig, reply tuple, state uint8, mark, id uint32) []byte {
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

// Whatever ctnetlink sends, the parser answers an entry or an error, and never panics.
func FuzzParseEntry(f *testing.F) {
	orig := tuple{src: netip.MustParseAddrPort("[fd00::5]:40000"), dst: netip.MustParseAddrPort("[2001:db8::1]:80")}
	f.Add(entryMessage(orig, tuple{src: netip.MustParseAddrPort("[::1]:15001"), dst: orig.src}, 1, 0, 1))
	f.Add([]byte{2, 0, 0, 0, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseEntry(b)
	})
}
