package logscan

import (
	"bytes"
	"time"
)

// SyslogLine is one line of a plain syslog file as rsyslog or syslog-ng write it:
//
//	Aug 27 12:45:20 node-1 kubelet[812]: E0827 12:45:20.123 ... message
//	2026-08-27T12:45:20.123456+00:00 node-1 kubelet[812]: message
type SyslogLine struct {
	Time    time.Time
	Host    string
	Program string // the tag without "[pid]"
	Message []byte // aliases the input
}

// traditionalStamp is the BSD syslog timestamp; it has no year and no zone.
const traditionalStamp = "Jan _2 15:04:05"

// ParseSyslogLine parses a syslog line. The traditional timestamp has no year: it is taken in
// now's year (the year before when that would be in the future) and in the local zone.
func ParseSyslogLine(line []byte, now time.Time) (SyslogLine, bool) {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	var l SyslogLine
	var rest []byte
	switch {
	case len(line) > 0 && line[0] >= '0' && line[0] <= '9':
		sp := bytes.IndexByte(line[:min(len(line), maxCRITimestamp+1)], ' ')
		if sp <= 0 {
			return l, false
		}
		t, err := parseRFC3339(line[:sp])
		if err != nil {
			return l, false
		}
		l.Time, rest = t, line[sp+1:]
	case len(line) > len(traditionalStamp) && line[len(traditionalStamp)] == ' ':
		t, err := time.ParseInLocation(traditionalStamp, string(line[:len(traditionalStamp)]), now.Location())
		if err != nil {
			return l, false
		}
		t = t.AddDate(now.Year(), 0, 0)
		if t.After(now.Add(24 * time.Hour)) {
			t = t.AddDate(-1, 0, 0)
		}
		l.Time, rest = t, line[len(traditionalStamp)+1:]
	default:
		return l, false
	}
	sp := bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return l, false
	}
	l.Host, rest = string(rest[:sp]), rest[sp+1:]
	// The tag ends at ": "; without one the whole rest is the message.
	if colon := bytes.Index(rest[:min(len(rest), 256)], []byte(": ")); colon > 0 && bytes.IndexByte(rest[:colon], ' ') < 0 {
		tag := rest[:colon]
		if br := bytes.IndexByte(tag, '['); br > 0 {
			tag = tag[:br]
		}
		l.Program, l.Message = string(tag), rest[colon+2:]
	} else {
		l.Message = rest
	}
	return l, true
}

// syslogHandler reads a plain syslog file.
type syslogHandler struct {
	fs    *fileScan
	now   time.Time
	cands []cand
}

func (h *syslogHandler) lines(b []byte, base int64) {
	h.cands = h.fs.m.candidates(b, h.cands[:0])
	for _, c := range h.cands {
		off := base + int64(c.start)
		if off < h.fs.done {
			continue
		}
		h.line(b[c.start:c.end], off, c.rules, false)
	}
}

func (h *syslogHandler) longLine(prefix []byte, off int64) {
	if off < h.fs.done {
		return
	}
	h.line(prefix, off, ^uint64(0), true)
}

func (h *syslogHandler) line(raw []byte, off int64, mask uint64, truncated bool) {
	l, ok := ParseSyslogLine(raw, h.now)
	if !ok {
		h.fs.badLines++
		return
	}
	if !h.fs.cutoff.IsZero() && l.Time.Before(h.fs.cutoff) {
		return
	}
	for _, r := range h.fs.rules {
		if mask&(1<<r.index) == 0 || !r.wantsSyslog(l.Program) || !r.mayMatch(l.Message) || !r.re.Match(l.Message) {
			continue
		}
		h.fs.emit(r, l.Message, off, l.Time, truncated, l.Program)
	}
}
