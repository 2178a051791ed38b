package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Entry is one journal entry: its place in the file, its sequence number and realtime, and the
// fields a log scanner reads. Any other field is skipped.
type Entry struct {
	// Offset is where the entry object is in the file, for evidence that points at it.
	Offset   uint64
	Seqnum   uint64
	Realtime time.Time
	// Message is MESSAGE, at most Options.MaxData bytes (Truncated says it was cut). It aliases a
	// buffer the iterator reuses: copy it to keep it past the next call to Next.
	Message   []byte
	Truncated bool
	// Unit is _SYSTEMD_UNIT, Identifier SYSLOG_IDENTIFIER, Comm _COMM, PID _PID.
	Unit       string
	Identifier string
	Comm       string
	PID        string
}

// Iterator walks a file's entries in file order (see File.Entries):
//
//	it := f.Entries(ctx, after, since)
//	for it.Next() {
//		e := it.Entry()
//		…
//	}
//	cursor := it.Last()
//	if err := it.Err(); err != nil { … }
type Iterator struct {
	j         *File
	ctx       context.Context
	after     uint64
	sinceUsec uint64
	itemSize  uint64
	last      uint64
	seen      uint64
	hops      int
	// The entry array being read: where it is, the next one, the next batch of items to read in
	// it and how many of its items are used.
	arr, next uint64
	inArray   bool
	i, n      uint64
	// The batch of entry offsets being read, and whether it ended at an item not written yet.
	items []uint64
	pos   int
	short bool
	e     Entry
	done  bool
	err   error
	stop  error
}

// entryBatch is how many entry offsets are read from an entry array at a time.
const entryBatch = 4096

// Entries returns an iterator over the entries with a sequence number above after whose realtime
// is not before since (zero: any), in file order. after is the cursor: the Last of an earlier
// iteration over the same file (File.ID), 0 for none. Entries past the cursor and, on a first
// read, before since are skipped whole entry arrays at a time or found by bisection, not read.
//
// Iteration stops, without an error, at the first entry journald has not finished writing, and
// at a damaged object (counted in Stats.DamagedObjects, with the reason in Incomplete): Last
// then stays before it, so the next iteration from Last reads it once it is whole and nothing
// is lost. Err is for a cancelled context or a file whose structure cannot be walked.
func (j *File) Entries(ctx context.Context, after uint64, since time.Time) *Iterator {
	it := &Iterator{j: j, ctx: ctx, after: after, last: after, arr: j.h.entryArrayOffset, itemSize: 8}
	if j.h.compact() {
		it.itemSize = 4
	}
	if !since.IsZero() && since.UnixMicro() > 0 {
		it.sinceUsec = uint64(since.UnixMicro())
	}
	return it
}

// Next advances to the next entry and reports whether there is one.
func (it *Iterator) Next() bool {
	for !it.done {
		if it.pos < len(it.items) {
			off := it.items[it.pos]
			it.pos++
			it.seen++
			if err := it.j.readEntry(off, &it.e, it.after, it.sinceUsec); err != nil {
				if errors.Is(err, errSkipEntry) {
					it.last = max(it.last, it.e.Seqnum)
					continue
				}
				// A damaged or half-written entry: stop here, retry on the next iteration.
				it.damaged(err)
				return false
			}
			it.j.stats.Entries++
			it.last = it.e.Seqnum
			return true
		}
		switch {
		case it.short:
			it.done = true // an item not written yet: the end of the entries
		case it.inArray && it.i < it.n && it.seen < it.j.h.nEntries:
			it.readBatch()
		default:
			if it.inArray {
				it.inArray = false
				it.arr = it.next
				it.hops++
			}
			it.enterArray()
		}
	}
	return false
}

// Entry is the current entry; it and its Message are valid until the next call to Next.
func (it *Iterator) Entry() *Entry { return &it.e }

// Last is the sequence number of the last entry the iteration went past (read or skipped): the
// cursor to resume from.
func (it *Iterator) Last() uint64 { return it.last }

// Err is the error that ended the iteration: a cancelled context or an entry array chain that
// does not end. nil when it ended at the file's end or stopped at an incomplete object.
func (it *Iterator) Err() error { return it.err }

// Incomplete says why the iteration stopped before the end of what journald finished writing: a
// damaged or truncated object (or, read in the middle of an append, one being written). nil when
// it read to that end.
func (it *Iterator) Incomplete() error { return it.stop }

func (it *Iterator) damaged(err error) {
	it.j.stats.DamagedObjects++
	it.incomplete(err)
}

func (it *Iterator) incomplete(err error) {
	it.stop = fmt.Errorf("journal file %s: %w", it.j.path, err)
	it.done = true
}

// enterArray moves to the first entry array, from it.arr on, that holds entries to read, and
// positions the iteration at the first of them; or ends the iteration.
func (it *Iterator) enterArray() {
	j := it.j
	for ; it.arr != 0 && it.seen < j.h.nEntries; it.hops++ {
		if err := it.ctx.Err(); err != nil {
			it.err, it.done = fmt.Errorf("reading journal %s: %w", j.path, err), true
			return
		}
		if it.hops > 64 {
			it.err, it.done = fmt.Errorf("journal %s: entry array chain too long", j.path), true
			return
		}
		_, size, err := j.objectHeader(it.arr, objEntryArray)
		if err != nil {
			it.damaged(err)
			return
		}
		b, err := j.readAt(it.arr+objectHeaderSize, 8)
		if err != nil {
			it.incomplete(err)
			return
		}
		next := binary.LittleEndian.Uint64(b)
		n := (size - objectHeaderSize - 8) / it.itemSize
		lastItem, used, err := j.lastArrayItem(it.arr, n, it.itemSize)
		if err != nil {
			it.damaged(err)
			return
		}
		if used == 0 {
			it.done = true // an array journald has not filled yet
			return
		}
		// Start past what was read before (seqnums only grow in a file) and, on a first start,
		// at the look-back (realtime, as far as the clock went forward): a whole array when its
		// last entry is older, else by bisection in it.
		start := uint64(0)
		if it.after > 0 || it.sinceUsec > 0 {
			sq, rt, err := j.entryKeys(lastItem)
			if err != nil {
				it.damaged(err)
				return
			}
			if sq <= it.after || rt < it.sinceUsec {
				it.seen += used
				it.last = max(it.last, sq)
				it.arr = next
				continue
			}
			start = j.firstItem(it.arr, used, it.itemSize, func(sq, rt uint64) bool { return sq > it.after && rt >= it.sinceUsec })
			it.seen += start
		}
		it.next, it.i, it.n, it.inArray = next, start, used, true
		it.items, it.pos = it.items[:0], 0
		return
	}
	it.done = true
}

// readBatch reads the next bounded batch of entry offsets of the current array.
func (it *Iterator) readBatch() {
	k := min(entryBatch, it.n-it.i)
	raw, err := it.j.readAt(it.arr+objectHeaderSize+8+it.i*it.itemSize, int(k*it.itemSize))
	if err != nil {
		it.damaged(err)
		return
	}
	it.i += k
	if it.items == nil {
		it.items = make([]uint64, 0, entryBatch)
	}
	it.items, it.pos = it.items[:0], 0
	for x := uint64(0); x < k; x++ {
		var off uint64
		if it.itemSize == 4 {
			off = uint64(binary.LittleEndian.Uint32(raw[x*4:]))
		} else {
			off = binary.LittleEndian.Uint64(raw[x*8:])
		}
		if off == 0 {
			break // not written yet: the end of the entries
		}
		it.items = append(it.items, off)
	}
	it.short = uint64(len(it.items)) < k
}

// lastArrayItem returns the last non-zero item of an entry array and how many items are used.
func (j *File) lastArrayItem(arr, n, itemSize uint64) (uint64, uint64, error) {
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
func (j *File) entryKeys(off uint64) (seqnum, realtime uint64, err error) {
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
func (j *File) firstItem(arr, used, itemSize uint64, ok func(seqnum, realtime uint64) bool) uint64 {
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

func (j *File) readEntry(off uint64, e *Entry, after, sinceUsec uint64) error {
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
	*e = Entry{Offset: off, Seqnum: le.Uint64(b[0:]), Message: e.Message[:0]}
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
