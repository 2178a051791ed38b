package journal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// The fields an Entry carries; any other field is skipped and remembered as such.
var (
	fieldMessage    = []byte("MESSAGE=")
	fieldUnit       = []byte("_SYSTEMD_UNIT=")
	fieldIdentifier = []byte("SYSLOG_IDENTIFIER=")
	fieldComm       = []byte("_COMM=")
	fieldPID        = []byte("_PID=")
)

func (j *File) readField(off uint64, e *Entry) error {
	if v, ok := j.fields.get(off); ok {
		// Data objects are shared by all entries with the same field=value; unit and identifier
		// objects repeat on every entry of a service, so remember them.
		switch v.kind {
		case 1:
			e.Unit = v.value
		case 2:
			e.Identifier = v.value
		case 3:
			e.Comm = v.value
		case 4:
			e.PID = v.value
		}
		return nil
	}
	flags, size, err := j.objectHeader(off, objData)
	if err != nil {
		return err
	}
	payloadAt := uint64(64)
	if j.h.compact() {
		payloadAt = 72
	}
	if size < payloadAt {
		return fmt.Errorf("data object at %d too small", off)
	}
	plen := size - payloadAt
	compressed := flags & (objCompressedXZ | objCompressedLZ4 | objCompressedZSTD)
	var payload []byte
	truncated := false
	if compressed == 0 {
		n := min(plen, uint64(j.maxData)+uint64(len(fieldMessage)))
		payload, err = j.readAt(off+payloadAt, int(n))
		if err != nil {
			return err
		}
		truncated = n < plen
	} else {
		raw, err := j.readAt(off+payloadAt, int(plen))
		if err != nil {
			return err
		}
		payload, truncated, err = j.decompress(compressed, raw)
		if err != nil {
			if errors.Is(err, errUnsupportedCompression) {
				j.stats.UnsupportedField++
				j.fields.put(off, cachedField{kind: 0})
				return nil
			}
			j.stats.DamagedObjects++
			return nil
		}
	}
	kind, prefix := 0, []byte(nil)
	switch {
	case bytes.HasPrefix(payload, fieldMessage):
		kind, prefix = -1, fieldMessage
	case bytes.HasPrefix(payload, fieldUnit):
		kind, prefix = 1, fieldUnit
	case bytes.HasPrefix(payload, fieldIdentifier):
		kind, prefix = 2, fieldIdentifier
	case bytes.HasPrefix(payload, fieldComm):
		kind, prefix = 3, fieldComm
	case bytes.HasPrefix(payload, fieldPID):
		kind, prefix = 4, fieldPID
	}
	if kind == -1 {
		e.Message = append(e.Message[:0], payload[len(prefix):]...)
		e.Truncated = truncated
		if truncated {
			j.stats.TruncatedField++
		}
		return nil
	}
	v := cachedField{kind: kind}
	if kind > 0 {
		v.value = string(payload[len(prefix):min(len(payload), len(prefix)+256)])
	}
	j.fields.put(off, v)
	return j.readField(off, e)
}

var errUnsupportedCompression = errors.New("unsupported journal compression")

// decompress returns at most maxData bytes of the field, and whether it was cut.
func (j *File) decompress(flags uint8, raw []byte) ([]byte, bool, error) {
	limit := j.maxData + len(fieldMessage)
	switch flags {
	case objCompressedZSTD:
		if j.zstd == nil {
			d, err := NewDecoder()
			if err != nil {
				return nil, false, err
			}
			j.zstd, j.ownZstd = d, true
		}
		if err := j.zstd.z.Reset(bytes.NewReader(raw)); err != nil {
			return nil, false, fmt.Errorf("zstd: %w", err)
		}
		if cap(j.dbuf) < limit+1 {
			j.dbuf = make([]byte, limit+1)
		}
		out := j.dbuf[:limit+1]
		n, err := io.ReadFull(j.zstd.z, out)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("zstd: %w", err)
		}
		if n > limit {
			return out[:limit], true, nil
		}
		return out[:n], false, nil
	case objCompressedLZ4:
		// systemd writes the uncompressed size as a little-endian 64-bit prefix, then an LZ4 block.
		if len(raw) < 8 {
			return nil, false, errors.New("lz4: short object")
		}
		return lz4Block(raw[8:], limit)
	default:
		return nil, false, errUnsupportedCompression
	}
}

// cachedField is what a data object holds, when it is not a message.
type cachedField struct {
	kind  int // 0 another field, 1 unit, 2 identifier, 3 comm, 4 pid
	value string
}

// fieldCache is a bounded map from data object offset to its field; it is cleared when full,
// which is cheap and keeps memory bounded.
type fieldCache struct {
	m map[uint64]cachedField
}

const fieldCacheSize = 8192

func (c *fieldCache) get(off uint64) (cachedField, bool) {
	v, ok := c.m[off]
	return v, ok
}

func (c *fieldCache) put(off uint64, v cachedField) {
	if c.m == nil || len(c.m) >= fieldCacheSize {
		c.m = make(map[uint64]cachedField, 256)
	}
	c.m[off] = v
}
