package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// The layout constants are systemd's (src/libsystemd/sd-journal/journal-def.h).
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

// DefaultMaxData bounds a message when Options.MaxData is not set.
const DefaultMaxData = 64 << 10

// Files lists the journal files (*.journal) of a journal directory, directly in it or in its
// per-machine subdirectories, as /var/log/journal and /run/log/journal hold them. A directory
// that does not exist holds none.
func Files(dir string) ([]string, error) {
	var out []string
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing journal dir: %w", err)
	}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		switch {
		case e.IsDir():
			sub, err := os.ReadDir(path)
			if err != nil {
				return out, fmt.Errorf("listing journal dir: %w", err)
			}
			for _, s := range sub {
				if !s.IsDir() && strings.HasSuffix(s.Name(), ".journal") {
					out = append(out, filepath.Join(path, s.Name()))
				}
			}
		case strings.HasSuffix(e.Name(), ".journal"):
			out = append(out, path)
		}
	}
	return out, nil
}

// Decoder decompresses zstd-compressed fields with bounded memory. One decoder serves the files
// read one after another (not concurrently), so a scan of many files builds it once.
type Decoder struct {
	z *zstd.Decoder
}

// NewDecoder returns a decoder; Close releases it.
func NewDecoder() (*Decoder, error) {
	z, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Decoder{z: z}, nil
}

// Close releases the decoder.
func (d *Decoder) Close() { d.z.Close() }

// Options says how a file is read.
type Options struct {
	// MaxData bounds the bytes kept of a message (default DefaultMaxData); a longer one is cut
	// and its entry marked Truncated.
	MaxData int
	// Decoder decompresses zstd fields; when nil the file makes its own, on the first such field.
	Decoder *Decoder
}

// Stats counts what reading skipped, for a caller's detail: nothing is skipped silently.
type Stats struct {
	Entries          int64 `json:"entries"`
	UnsupportedField int64 `json:"unsupportedCompressedFields,omitempty"`
	TruncatedField   int64 `json:"truncatedFields,omitempty"`
	DamagedObjects   int64 `json:"damagedObjects,omitempty"`
}

// Add adds o's counts to s.
func (s *Stats) Add(o Stats) {
	s.Entries += o.Entries
	s.UnsupportedField += o.UnsupportedField
	s.TruncatedField += o.TruncatedField
	s.DamagedObjects += o.DamagedObjects
}

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

// File reads one journal file with pread; it never maps or locks the file, and tolerates
// journald appending to it concurrently (an entry not fully linked yet is simply not seen yet).
// A File is not safe for concurrent use.
type File struct {
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
	zstd    *Decoder
	ownZstd bool
	maxData int
	fields  fieldCache
	stats   Stats
}

// Open opens a journal file and reads its header. A file that is not a journal, or whose header
// is cut short or uses a layout this reader does not know, is an error naming the file.
func Open(path string, opts Options) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening journal file: %w", err)
	}
	if opts.MaxData <= 0 {
		opts.MaxData = DefaultMaxData
	}
	j := &File{f: f, path: path, maxData: opts.MaxData, zstd: opts.Decoder}
	if err := j.readHeader(); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal file %s: %w", path, err)
	}
	return j, nil
}

// Close closes the file (and the decoder it made for itself, if any).
func (j *File) Close() error {
	if j.ownZstd {
		j.zstd.Close()
		j.zstd, j.ownZstd = nil, false
	}
	return j.f.Close()
}

// Path is the file's path, as opened.
func (j *File) Path() string { return j.path }

// ID is the file's 128-bit identity in hex, stable across journald's rename on rotation: with an
// entry's sequence number, a cursor that needs no cursor string.
func (j *File) ID() string { return hex.EncodeToString(j.h.fileID[:]) }

// Tail is the sequence number and realtime of the file's last entry, as its header says; the
// time is zero for a file with no entries.
func (j *File) Tail() (seqnum uint64, realtime time.Time) {
	if j.h.tailRealtime > 0 {
		realtime = time.UnixMicro(int64(j.h.tailRealtime))
	}
	return j.h.tailSeqnum, realtime
}

// Stats returns what reading the file has counted so far.
func (j *File) Stats() Stats { return j.stats }

func (j *File) readHeader() error {
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
func (j *File) readAt(off uint64, n int) ([]byte, error) {
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

// objectHeader reads an object header and checks its type.
func (j *File) objectHeader(off uint64, want uint8) (flags uint8, size uint64, err error) {
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
