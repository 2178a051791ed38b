package logscan

import (
	"bytes"
)

// multiSearch finds every occurrence of a set of literals in one pass over a buffer: the
// Wu–Manber algorithm, Boyer–Moore–Horspool generalised to many patterns with a shift table on
// two-byte blocks. The window is as long as the shortest literal (m); reading the block at its end
// either proves no literal can end there and shifts the window by up to m-1 bytes, or names the
// few literals whose prefix ends with that block, which are then compared. Log text rarely holds
// the blocks of error-message literals, so most steps skip ten to twenty bytes: one pass over the
// buffer whatever the number of literals, where a bytes.Index per literal would make as many.
type multiSearch struct {
	m     int // window: the shortest literal's length, at most maxWindow
	lits  [][]byte
	shift *[1 << 16]uint8
	// first[block] is the first literal whose window prefix ends with block, next chains the others;
	// -1 ends a chain.
	first *[1 << 16]int32
	next  []int32
}

// maxWindow bounds the window so shifts fit a byte.
const maxWindow = 255

// minWindow is the shortest window worth the tables; below it each literal is searched alone.
const minWindow = 4

func newMultiSearch(lits [][]byte) *multiSearch {
	m := maxWindow
	for _, l := range lits {
		m = min(m, len(l))
	}
	if m < minWindow {
		return nil
	}
	s := &multiSearch{m: m, lits: lits, shift: new([1 << 16]uint8), first: new([1 << 16]int32), next: make([]int32, len(lits))}
	for i := range s.shift {
		s.shift[i] = uint8(m - 1)
		s.first[i] = -1
	}
	for i, l := range lits {
		for q := 1; q < m; q++ {
			blk := uint16(l[q-1]) | uint16(l[q])<<8
			if sh := uint8(m - 1 - q); sh < s.shift[blk] {
				s.shift[blk] = sh
			}
		}
		blk := uint16(l[m-2]) | uint16(l[m-1])<<8
		s.next[i] = s.first[blk]
		s.first[blk] = int32(i)
	}
	return s
}

// each calls fn with the start of every occurrence of a literal in b and the literal's index,
// in order of position.
func (s *multiSearch) each(b []byte, fn func(start, lit int)) {
	m := s.m
	n := len(b)
	shift, first := s.shift, s.first
	for pos := m - 1; pos < n; {
		blk := uint16(b[pos-1]) | uint16(b[pos])<<8
		if sh := shift[blk]; sh != 0 {
			pos += int(sh)
			continue
		}
		start := pos - m + 1
		for i := first[blk]; i >= 0; i = s.next[i] {
			l := s.lits[i]
			if start+len(l) <= n && bytes.Equal(b[start:start+len(l)], l) {
				fn(start, int(i))
			}
		}
		pos++
	}
}
