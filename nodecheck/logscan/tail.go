package logscan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// chunkReader reads whole lines into one fixed buffer: memory stays bounded whatever a file holds
// (a 10 MiB line, binary junk without newlines, a half-written last line).
type chunkReader struct {
	buf     []byte
	maxLine int
	long    []byte // the first maxLine bytes of a line longer than buf
}

func newChunkReader(chunk, maxLine int) *chunkReader {
	return &chunkReader{buf: make([]byte, chunk), maxLine: maxLine, long: make([]byte, 0, maxLine)}
}

// lineHandler consumes what a chunkReader reads.
type lineHandler interface {
	// lines gets whole lines, each ending in '\n'; base is the file offset of b[0]. b is only
	// valid during the call.
	lines(b []byte, base int64)
	// longLine gets the first maxLine bytes of a line longer than the read buffer, once its end
	// has been read; off is the line's file offset.
	longLine(prefix []byte, off int64)
}

// read hands the lines of r, which is positioned at file offset start, to h, and returns the
// offset just past the last line handed over. A last line without a newline is left for the next
// read (the writer may be in the middle of it) unless final says the file will not grow.
func (c *chunkReader) read(ctx context.Context, r io.Reader, start int64, final bool, h lineHandler) (int64, error) {
	pos := start // file offset of buf[0]
	n := 0       // bytes held in buf
	inLong := false
	var longStart int64
	for {
		if err := ctx.Err(); err != nil {
			if inLong {
				return longStart, err
			}
			return pos, err
		}
		m, err := r.Read(c.buf[n:])
		n += m
		eof := errors.Is(err, io.EOF)
		if err != nil && !eof {
			if inLong {
				return longStart, fmt.Errorf("reading at %d: %w", pos+int64(n), err)
			}
			return pos, fmt.Errorf("reading at %d: %w", pos+int64(n), err)
		}
		data := c.buf[:n]
		consumed := 0
		if inLong {
			nl := bytes.IndexByte(data, '\n')
			if nl < 0 {
				pos += int64(n)
				n = 0
				if eof {
					if final {
						h.longLine(c.long, longStart)
						return pos, nil
					}
					return longStart, nil
				}
				continue
			}
			h.longLine(c.long, longStart)
			inLong = false
			consumed = nl + 1
		}
		if last := bytes.LastIndexByte(data[consumed:], '\n'); last >= 0 {
			h.lines(data[consumed:consumed+last+1], pos+int64(consumed))
			consumed += last + 1
		}
		rest := n - consumed
		copy(c.buf, c.buf[consumed:n])
		pos += int64(consumed)
		n = rest
		if eof {
			switch {
			case !final || n == 0:
			case n == len(c.buf):
				h.longLine(c.buf[:c.maxLine], pos)
				pos += int64(n)
			default:
				c.buf[n] = '\n'
				h.lines(c.buf[:n+1], pos)
				pos += int64(n)
			}
			return pos, nil
		}
		if n == len(c.buf) {
			inLong = true
			longStart = pos
			c.long = append(c.long[:0], c.buf[:c.maxLine]...)
			pos += int64(n)
			n = 0
		}
	}
}

// cand is a line that contains a rule's literal: b[start:end] and the rules to try on it.
type cand struct {
	start, end int
	rules      uint64
}

// matcher finds candidate lines in a buffer of whole lines for a set of rules.
type matcher struct {
	lits   []litRules
	ms     *multiSearch // nil when a literal is too short for it
	always uint64       // rules without a literal pre-filter
}

type litRules struct {
	lit   []byte
	rules uint64
}

func newMatcher(rules []*compiledRule) *matcher {
	m := &matcher{}
	idx := map[string]int{}
	for _, r := range rules {
		bit := uint64(1) << r.index
		if r.literals == nil {
			m.always |= bit
			continue
		}
		for _, l := range r.literals {
			i, ok := idx[string(l)]
			if !ok {
				i = len(m.lits)
				idx[string(l)] = i
				m.lits = append(m.lits, litRules{lit: l})
			}
			m.lits[i].rules |= bit
		}
	}
	if len(m.lits) > 0 {
		lits := make([][]byte, len(m.lits))
		for i, l := range m.lits {
			lits[i] = l.lit
		}
		m.ms = newMultiSearch(lits)
	}
	return m
}

// candidates appends the lines of b (whole lines, ending in '\n') that may match, in order.
func (m *matcher) candidates(b []byte, out []cand) []cand {
	if m.always != 0 {
		for s := 0; s < len(b); {
			e := s + bytes.IndexByte(b[s:], '\n') + 1
			mask := m.always
			for _, l := range m.lits {
				if bytes.Contains(b[s:e], l.lit) {
					mask |= l.rules
				}
			}
			out = append(out, cand{s, e, mask})
			s = e
		}
		return out
	}
	first := len(out)
	add := func(pos, lit int) {
		if n := len(out); n > first && pos < out[n-1].end {
			out[n-1].rules |= m.lits[lit].rules // another literal in the same line
			return
		}
		s := bytes.LastIndexByte(b[:pos], '\n') + 1
		e := pos + len(m.lits[lit].lit)
		e += bytes.IndexByte(b[e:], '\n') + 1
		out = append(out, cand{s, e, m.lits[lit].rules})
	}
	if m.ms != nil {
		m.ms.each(b, add)
		return out
	}
	// Short literals: one search each, then merge in line order.
	for i, l := range m.lits {
		for at := 0; at < len(b); {
			k := bytes.Index(b[at:], l.lit)
			if k < 0 {
				break
			}
			pos := at + k
			s := bytes.LastIndexByte(b[:pos], '\n') + 1
			e := pos + len(l.lit)
			e += bytes.IndexByte(b[e:], '\n') + 1
			out = append(out, cand{s, e, m.lits[i].rules})
			at = e
		}
	}
	if len(m.lits) > 1 && len(out)-first > 1 {
		found := out[first:]
		slices.SortFunc(found, func(a, b cand) int { return a.start - b.start })
		w := 0
		for _, c := range found {
			if w > 0 && found[w-1].start == c.start {
				found[w-1].rules |= c.rules
				continue
			}
			found[w] = c
			w++
		}
		out = out[:first+w]
	}
	return out
}

// mayMatch reports whether msg contains one of the rule's literals (or it has none).
func (r *compiledRule) mayMatch(msg []byte) bool {
	if r.literals == nil {
		return true
	}
	for _, l := range r.literals {
		if bytes.Contains(msg, l) {
			return true
		}
	}
	return false
}

// fileScan is what a handler knows of the file it reads.
type fileScan struct {
	path   string
	origin string // the pod's container, for samples
	rules  []*compiledRule
	m      *matcher
	// done: lines starting before it were evaluated in an earlier pass and must not count again.
	done int64
	// cutoff: on a first start, lines older than this are outside the look-back.
	cutoff time.Time
	emit   func(r *compiledRule, msg []byte, off int64, t time.Time, truncated bool, origin string)
	// badLines counts lines that are not in the file's format (binary junk, cut lines).
	badLines int64
}

// criHandler reads a container log in the CRI format.
type criHandler struct {
	fs      *fileScan
	maxLine int
	pending [2]partialMsg // stdout, stderr
	cands   []cand
}

// partialMsg is a message being joined from P lines.
type partialMsg struct {
	active    bool
	start     int64
	t         time.Time
	buf       []byte
	truncated bool
}

func (p *partialMsg) add(b []byte, maxLine int) {
	room := maxLine - len(p.buf)
	if len(b) > room {
		b = b[:max(room, 0)]
		p.truncated = true
	}
	p.buf = append(p.buf, b...)
}

// hasPartialLine reports whether b (whole lines) holds a CRI line tagged P, alone or with more
// tags. It looks at each line's tag where it is, right after the timestamp and the stream: two
// short searches per line, far cheaper than the regexps it keeps away.
func hasPartialLine(b []byte) bool {
	for s := 0; s < len(b); {
		e := s + bytes.IndexByte(b[s:], '\n')
		if e < s {
			e = len(b)
		}
		line := b[s:e]
		if sp := bytes.IndexByte(line[:min(len(line), maxCRITimestamp+1)], ' '); sp > 0 && len(line) > sp+8 && line[sp+8] == 'P' &&
			(len(line) == sp+9 || line[sp+9] == ' ' || line[sp+9] == ':') {
			if st := line[sp+1 : sp+8]; string(st) == "stdout " || string(st) == "stderr " {
				return true
			}
		}
		s = e + 1
	}
	return false
}

func (h *criHandler) lines(b []byte, base int64) {
	if h.pending[0].active || h.pending[1].active || hasPartialLine(b) {
		h.slow(b, base)
		return
	}
	h.cands = h.fs.m.candidates(b, h.cands[:0])
	for _, c := range h.cands {
		off := base + int64(c.start)
		if off < h.fs.done {
			continue
		}
		l, err := ParseCRILine(b[c.start:c.end])
		if err != nil {
			h.fs.badLines++
			continue
		}
		h.eval(c.rules, l.Message, off, l.Time, false)
	}
}

func (h *criHandler) longLine(prefix []byte, off int64) {
	h.line(prefix, off, true)
}

// slow handles lines one by one: when partial lines are joined.
func (h *criHandler) slow(b []byte, base int64) {
	for len(b) > 0 {
		e := bytes.IndexByte(b, '\n') + 1
		h.line(b[:e], base, false)
		b = b[e:]
		base += int64(e)
	}
}

func (h *criHandler) line(raw []byte, off int64, truncated bool) {
	l, err := ParseCRILine(raw)
	if err != nil {
		h.fs.badLines++
		return
	}
	p := &h.pending[0]
	if l.Stream == "stderr" {
		p = &h.pending[1]
	}
	if l.Partial {
		if !p.active {
			*p = partialMsg{active: true, start: off, t: l.Time, buf: p.buf[:0]}
		}
		p.add(l.Message, h.maxLine)
		p.truncated = p.truncated || truncated
		return
	}
	msg, start, t := l.Message, off, l.Time
	if p.active {
		p.add(l.Message, h.maxLine)
		msg, start, t, truncated = p.buf, p.start, p.t, p.truncated || truncated
		p.active = false
	}
	if off < h.fs.done {
		return // this message ended in a line an earlier pass evaluated
	}
	h.eval(^uint64(0), msg, start, t, truncated)
}

// flush evaluates messages left partial at the end of a file that will not grow any more.
func (h *criHandler) flush() {
	for i := range h.pending {
		p := &h.pending[i]
		if p.active {
			h.eval(^uint64(0), p.buf, p.start, p.t, p.truncated)
			p.active = false
		}
	}
}

// resumeAt is where the next read must start so that a message still being joined is read whole.
func (h *criHandler) resumeAt(next int64) int64 {
	for _, p := range h.pending {
		if p.active && p.start < next {
			next = p.start
		}
	}
	return next
}

func (h *criHandler) eval(mask uint64, msg []byte, off int64, t time.Time, truncated bool) {
	if !h.fs.cutoff.IsZero() && t.Before(h.fs.cutoff) {
		return
	}
	for _, r := range h.fs.rules {
		if mask&(1<<r.index) == 0 || !r.mayMatch(msg) || !r.re.Match(msg) {
			continue
		}
		h.fs.emit(r, msg, off, t, truncated, h.fs.origin)
	}
}
