package logscan

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/klauspost/compress/zstd"
)

// The systemd journal is read natively, from its files, following systemd's documented on-disk
// format (JOURNAL_FILE_FORMAT): header, entry arrays, entry objects, data objects. See the package
// documentation for why this and not journalctl.

const (
	journalHeaderMin = 208 // every field up to tail_entry_monotonic (systemd ≥ 187 is larger)
	objectHeaderSize = 16

	objData       = 1
	objEntry      = 3
	objEntryArray = 6

	objCompressedXZ   = 1
	objCompressedLZ4  = 2
	objCompressedZSTD = 4

	incompatXZ        = 1 << 0
	incompatLZ4       = 1 << 1
	incompatKeyedHash = 1 << 2
	incompatZSTD      = 1 << 3
	incompatCompact   = 1 << 4
	incompatKnown     = incompatXZ | incompatLZ4 | incompatKeyedHash | incompatZSTD | incompatCompact

	// maxEntryItems bounds the fields of one entry we look at (journald caps entries at 1024 fields
	// by default); larger counts mean a damaged object.
	maxEntryItems = 4096
	// maxObjectSize bounds any object we read; journald's own default limits are far below.
	maxObjectSize = 256 << 20
)

var journalSignature = []byte("LPKSHHRH")

// journalHeader holds the header fields the reader needs.
type journalHeader struct {
	incompatible     uint32
	state            uint8
	fileID           [16]byte
	headerSize       uint64
	arenaSize        uint64
	nEntries         uint64
	tailSeqnum       uint64
	headSeqnum       uint64
	entryArrayOffset uint64
	headRealtime     uint64
	tailRealtime     uint64
}

func (h *journalHeader) compact() bool { return h.incompatible&incompatCompact != 0 }

// FileID is the journal file's 128-bit identity, stable across journald's rename on rotation.
func (h *journalHeader) FileID() string { return hex.EncodeToString(h.fileID[:]) }

// journalFile reads one journal file with pread; it never maps or locks the file, and tolerates
// journald appending to it concurrently (an entry not fully linked yet is simply not seen yet).
type journalFile struct {
	f    *os.File
	path string
	size int64
	h    journalHeader
	// scratch buffers, reused so reading allocates little whatever the file holds
	buf     []byte
	blocks  [journalBlocks]journalBlock
	tick    uint64
	dbuf    []byte
	items   []uint64
	zstd    *zstd.Decoder
	maxData int
	fields  fieldCache
	stats   *journalStats
}

// journalStats counts what the reader had to skip, for the check's detail.
type journalStats struct {
	Entries          int64 `json:"entries"`
	UnsupportedField int64 `json:"unsupportedCompressedFields,omitempty"`
	TruncatedField   int64 `json:"truncatedFields,omitempty"`
	DamagedObjects   int64 `json:"damagedObjects,omitempty"`
}

func openJournal(path string, maxData int, dec *zstd.Decoder, stats *journalStats) (*journalFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening journal file: %w", err)
	}
	j := &journalFile{f: f, path: path, maxData: maxData, zstd: dec, stats: stats}
	if err := j.readHeader(); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal file %s: %w", path, err)
	}
	return j, nil
}

func (j *journalFile) Close() error { return j.f.Close() }

func (j *journalFile) readHeader() error {
	fi, err := j.f.Stat()
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	j.size = fi.Size()
	b := make([]byte, journalHeaderMin)
	if _, err := j.f.ReadAt(b, 0); err != nil {
		return fmt.Errorf("reading header: %w", err)
	}
	if !bytes.Equal(b[:8], journalSignature) {
		return errors.New("not a journal file (bad signature)")
	}
	le := binary.LittleEndian
	h := journalHeader{
		incompatible:     le.Uint32(b[12:]),
		state:            b[16],
		headerSize:       le.Uint64(b[88:]),
		arenaSize:        le.Uint64(b[96:]),
		nEntries:         le.Uint64(b[152:]),
		tailSeqnum:       le.Uint64(b[160:]),
		headSeqnum:       le.Uint64(b[168:]),
		entryArrayOffset: le.Uint64(b[176:]),
		headRealtime:     le.Uint64(b[184:]),
		tailRealtime:     le.Uint64(b[192:]),
	}
	copy(h.fileID[:], b[24:40])
	if h.incompatible&^incompatKnown != 0 {
		return fmt.Errorf("unsupported incompatible flags %#x", h.incompatible&^incompatKnown)
	}
	if h.headerSize < journalHeaderMin || h.headerSize > uint64(j.size) {
		return fmt.Errorf("bad header size %d", h.headerSize)
	}
	j.h = h
	return nil
}

// Reads go through a few cached blocks: an entry, its data objects and the next entries are
// usually close together (journald appends them in that order), so most reads are served
// without a system call.
const (
	journalBlockSize = 64 << 10
	journalBlocks    = 4
)

type journalBlock struct {
	off  uint64
	data []byte
	used uint64 // last use, for eviction
}

// readAt returns n bytes at off, bounded by the file's size. The slice is only valid until the
// next read.
func (j *journalFile) readAt(off uint64, n int) ([]byte, error) {
	if off < j.h.headerSize || int64(off)+int64(n) > j.size || n < 0 {
		return nil, fmt.Errorf("read at %d (+%d) outside the file", off, n)
	}
	if n > journalBlockSize {
		if cap(j.buf) < n {
			j.buf = make([]byte, n)
		}
		b := j.buf[:n]
		if _, err := j.f.ReadAt(b, int64(off)); err != nil {
			return nil, fmt.Errorf("reading at %d: %w", off, err)
		}
		return b, nil
	}
	j.tick++
	victim := 0
	for i := range j.blocks {
		b := &j.blocks[i]
		if b.data != nil && off >= b.off && off+uint64(n) <= b.off+uint64(len(b.data)) {
			b.used = j.tick
			return b.data[off-b.off : off-b.off+uint64(n)], nil
		}
		if b.used < j.blocks[victim].used {
			victim = i
		}
	}
	b := &j.blocks[victim]
	if b.data == nil {
		b.data = make([]byte, journalBlockSize)
	}
	size := min(uint64(journalBlockSize), uint64(j.size)-off)
	b.data = b.data[:size]
	if _, err := j.f.ReadAt(b.data, int64(off)); err != nil && !errors.Is(err, io.EOF) {
		b.data = b.data[:0]
		return nil, fmt.Errorf("reading at %d: %w", off, err)
	}
	b.off, b.used = off, j.tick
	return b.data[:n], nil
}

// object reads an object header and checks its type.
func (j *journalFile) objectHeader(off uint64, want uint8) (flags uint8, size uint64, err error) {
	if off%8 != 0 {
		return 0, 0, fmt.Errorf("object offset %d is not aligned", off)
	}
	b, err := j.readAt(off, objectHeaderSize)
	if err != nil {
		return 0, 0, err
	}
	size = binary.LittleEndian.Uint64(b[8:])
	if b[0] != want {
		return 0, 0, fmt.Errorf("object at %d has type %d, want %d", off, b[0], want)
	}
	if size < objectHeaderSize || size > maxObjectSize || int64(off+size) > j.size {
		return 0, 0, fmt.Errorf("object at %d has bad size %d", off, size)
	}
	return b[1], size, nil
}

// journalEntry is what the scanner needs of one entry.
type journalEntry struct {
	Offset     uint64
	Seqnum     uint64
	Realtime   time.Time
	Message    []byte // bounded; aliases a reused buffer
	Truncated  bool
	Unit       string
	Identifier string
	Comm       string
	PID        string
}

// entries calls fn for every entry with seqnum > after whose realtime is not before since, in
// file order. It stops quietly at the first entry journald has not finished writing. It returns
// the last seqnum and realtime it went past.
func (j *journalFile) entries(ctx context.Context, after uint64, since time.Time, fn func(*journalEntry)) (uint64, error) {
	last := after
	seen := uint64(0)
	arr := j.h.entryArrayOffset
	itemSize := uint64(8)
	if j.h.compact() {
		itemSize = 4
	}
	var sinceUsec uint64
	if !since.IsZero() && since.UnixMicro() > 0 {
		sinceUsec = uint64(since.UnixMicro())
	}
	var e journalEntry
	for hops := 0; arr != 0 && seen < j.h.nEntries; hops++ {
		if err := ctx.Err(); err != nil {
			return last, fmt.Errorf("reading journal %s: %w", j.path, err)
		}
		if hops > 64 {
			return last, fmt.Errorf("journal %s: entry array chain too long", j.path)
		}
		_, size, err := j.objectHeader(arr, objEntryArray)
		if err != nil {
			j.stats.DamagedObjects++
			return last, nil
		}
		b, err := j.readAt(arr+objectHeaderSize, 8)
		if err != nil {
			return last, nil
		}
		next := binary.LittleEndian.Uint64(b)
		n := (size - objectHeaderSize - 8) / itemSize
		lastItem, used, err := j.lastArrayItem(arr, n, itemSize)
		if err != nil {
			j.stats.DamagedObjects++
			return last, nil
		}
		if used == 0 {
			return last, nil // an array journald has not filled yet
		}
		// Start past what was read before (seqnums only grow in a file) and, on a first start,
		// at the look-back (realtime, as far as the clock went forward): a whole array when its
		// last entry is older, else by bisection in it.
		start := uint64(0)
		if after > 0 || sinceUsec > 0 {
			sq, rt, err := j.entryKeys(lastItem)
			if err != nil {
				j.stats.DamagedObjects++
				return last, nil
			}
			if sq <= after || rt < sinceUsec {
				seen += used
				last = max(last, sq)
				arr = next
				continue
			}
			start = j.firstItem(arr, used, itemSize, func(sq, rt uint64) bool { return sq > after && rt >= sinceUsec })
			seen += start
		}
		n = used
		// Read the items in bounded batches.
		const batch = 4096
		items := make([]uint64, 0, batch)
		for i := start; i < n && seen < j.h.nEntries; i += batch {
			k := min(batch, n-i)
			raw, err := j.readAt(arr+objectHeaderSize+8+i*itemSize, int(k*itemSize))
			if err != nil {
				j.stats.DamagedObjects++
				return last, nil
			}
			items = items[:0]
			for x := uint64(0); x < k; x++ {
				var off uint64
				if itemSize == 4 {
					off = uint64(binary.LittleEndian.Uint32(raw[x*4:]))
				} else {
					off = binary.LittleEndian.Uint64(raw[x*8:])
				}
				if off == 0 {
					break // not written yet: the end of the entries
				}
				items = append(items, off)
			}
			for _, off := range items {
				seen++
				if err := j.readEntry(off, &e, after, sinceUsec); err != nil {
					if errors.Is(err, errSkipEntry) {
						if e.Seqnum > last {
							last = e.Seqnum
						}
						continue
					}
					// A damaged or half-written entry: stop here, retry on the next pass.
					j.stats.DamagedObjects++
					return last, nil
				}
				j.stats.Entries++
				last = e.Seqnum
				fn(&e)
			}
			if uint64(len(items)) < k {
				return last, nil
			}
		}
		arr = next
	}
	return last, nil
}

// lastArrayItem returns the last non-zero item of an entry array and how many items are used.
func (j *journalFile) lastArrayItem(arr, n, itemSize uint64) (uint64, uint64, error) {
	for i := n; i > 0; {
		k := min(i, 512)
		start := i - k
		raw, err := j.readAt(arr+objectHeaderSize+8+start*itemSize, int(k*itemSize))
		if err != nil {
			return 0, 0, err
		}
		for x := k; x > 0; x-- {
			var off uint64
			if itemSize == 4 {
				off = uint64(binary.LittleEndian.Uint32(raw[(x-1)*4:]))
			} else {
				off = binary.LittleEndian.Uint64(raw[(x-1)*8:])
			}
			if off != 0 {
				return off, start + x, nil
			}
		}
		i = start
	}
	return 0, 0, nil
}

// entryKeys reads an entry's seqnum and realtime.
func (j *journalFile) entryKeys(off uint64) (seqnum, realtime uint64, err error) {
	if _, _, err := j.objectHeader(off, objEntry); err != nil {
		return 0, 0, err
	}
	b, err := j.readAt(off+objectHeaderSize, 16)
	if err != nil {
		return 0, 0, err
	}
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:]), nil
}

// firstItem finds by bisection the first of an array's used items whose entry satisfies ok, a
// predicate false then true along the array; used if none. An unreadable entry counts as
// satisfying it, so that reading starts no later than it and meets the damage itself.
func (j *journalFile) firstItem(arr, used, itemSize uint64, ok func(seqnum, realtime uint64) bool) uint64 {
	lo, hi := uint64(0), used
	for lo < hi {
		mid := lo + (hi-lo)/2
		raw, err := j.readAt(arr+objectHeaderSize+8+mid*itemSize, int(itemSize))
		if err != nil {
			return lo
		}
		var off uint64
		if itemSize == 4 {
			off = uint64(binary.LittleEndian.Uint32(raw))
		} else {
			off = binary.LittleEndian.Uint64(raw)
		}
		sq, rt, err := j.entryKeys(off)
		if err != nil || ok(sq, rt) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

var errSkipEntry = errors.New("entry skipped")

// entryFixed is the entry object's fixed part after the object header: seqnum, realtime,
// monotonic, boot_id, xor_hash.
const entryFixed = 8 + 8 + 8 + 16 + 8

func (j *journalFile) readEntry(off uint64, e *journalEntry, after, sinceUsec uint64) error {
	_, size, err := j.objectHeader(off, objEntry)
	if err != nil {
		return err
	}
	if size < objectHeaderSize+entryFixed {
		return fmt.Errorf("entry at %d too small", off)
	}
	itemSize := uint64(16)
	if j.h.compact() {
		itemSize = 4
	}
	nItems := (size - objectHeaderSize - entryFixed) / itemSize
	if nItems > maxEntryItems {
		return fmt.Errorf("entry at %d has %d items", off, nItems)
	}
	b, err := j.readAt(off+objectHeaderSize, int(entryFixed+nItems*itemSize))
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	*e = journalEntry{Offset: off, Seqnum: le.Uint64(b[0:]), Message: e.Message[:0]}
	rt := le.Uint64(b[8:])
	e.Realtime = time.UnixMicro(int64(rt)).UTC()
	if e.Seqnum <= after || rt < sinceUsec {
		return errSkipEntry
	}
	if uint64(cap(j.items)) < nItems {
		j.items = make([]uint64, nItems)
	}
	items := j.items[:nItems]
	for i := range items {
		p := entryFixed + uint64(i)*itemSize
		if itemSize == 4 {
			items[i] = uint64(le.Uint32(b[p:]))
		} else {
			items[i] = le.Uint64(b[p:])
		}
	}
	for _, d := range items {
		if err := j.readField(d, e); err != nil {
			return err
		}
	}
	return nil
}

// Fields the scanner reads; any other field is skipped and remembered as such.
var (
	fieldMessage    = []byte("MESSAGE=")
	fieldUnit       = []byte("_SYSTEMD_UNIT=")
	fieldIdentifier = []byte("SYSLOG_IDENTIFIER=")
	fieldComm       = []byte("_COMM=")
	fieldPID        = []byte("_PID=")
)

func (j *journalFile) readField(off uint64, e *journalEntry) error {
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
func (j *journalFile) decompress(flags uint8, raw []byte) ([]byte, bool, error) {
	limit := j.maxData + len(fieldMessage)
	switch flags {
	case objCompressedZSTD:
		if j.zstd == nil {
			return nil, false, errUnsupportedCompression
		}
		if err := j.zstd.Reset(bytes.NewReader(raw)); err != nil {
			return nil, false, fmt.Errorf("zstd: %w", err)
		}
		if cap(j.dbuf) < limit+1 {
			j.dbuf = make([]byte, limit+1)
		}
		out := j.dbuf[:limit+1]
		n, err := io.ReadFull(j.zstd, out)
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

// lz4Block decodes an LZ4 block (the format systemd uses for LZ4-compressed fields), producing at
// most limit bytes.
func lz4Block(src []byte, limit int) ([]byte, bool, error) {
	dst := make([]byte, 0, min(limit, 4*len(src)+64))
	i := 0
	for i < len(src) {
		token := src[i]
		i++
		lit := int(token >> 4)
		if lit == 15 {
			for {
				if i >= len(src) {
					return nil, false, errors.New("lz4: truncated literal length")
				}
				b := src[i]
				i++
				lit += int(b)
				if b != 255 {
					break
				}
			}
		}
		if lit > len(src)-i {
			return nil, false, errors.New("lz4: literal overruns input")
		}
		if len(dst)+lit > limit {
			dst = append(dst, src[i:i+limit-len(dst)]...)
			return dst, true, nil
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			return dst, false, nil // the last sequence has literals only
		}
		if i+2 > len(src) {
			return nil, false, errors.New("lz4: truncated offset")
		}
		offset := int(src[i]) | int(src[i+1])<<8
		i += 2
		if offset == 0 || offset > len(dst) {
			return nil, false, errors.New("lz4: bad match offset")
		}
		ml := int(token & 15)
		if ml == 15 {
			for {
				if i >= len(src) {
					return nil, false, errors.New("lz4: truncated match length")
				}
				b := src[i]
				i++
				ml += int(b)
				if b != 255 {
					break
				}
			}
		}
		ml += 4
		for k := 0; k < ml; k++ {
			if len(dst) >= limit {
				return dst, true, nil
			}
			dst = append(dst, dst[len(dst)-offset])
		}
	}
	return dst, false, nil
}
