package logscan

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/journal"
)

// Config says where the node's logs are and how to read them.
type Config struct {
	// PodLogDir is kubelet's container log directory (/var/log/pods); empty skips container logs.
	PodLogDir string
	// JournalDirs hold journal files, directly or in per-machine subdirectories
	// (/var/log/journal, /run/log/journal).
	JournalDirs []string
	// SyslogFiles are plain syslog files (/var/log/syslog, /var/log/messages); their rotated
	// copies beside them are read too.
	SyslogFiles []string
	Rules       *RuleSet
	// Since is how far back a first start reads (and a pod or file never seen before).
	Since time.Duration
	// Window is how long evidence stays in the report after its last match (default Since).
	Window time.Duration
	// StateDir keeps offsets and conditions across restarts; empty keeps them in memory only.
	StateDir string
	Now      func() time.Time
	Log      *slog.Logger
	// ChunkSize is the read buffer (default 1 MiB); MaxLine bounds one message (default 64 KiB).
	ChunkSize int
	MaxLine   int
	// OnMatch, when set, sees every match as it is found (tests, per-pod events).
	OnMatch func(Match)
}

// Scanner reads the node's logs pass after pass and keeps the conditions its rules found. It is
// safe for concurrent use; passes are serialised.
type Scanner struct {
	cfg    Config
	mu     sync.Mutex
	state  *scanState
	loaded bool
	reader *chunkReader
	// zstd serves every journal file of every pass, read one after another.
	zstd *journal.Decoder
	last ScanStats
	// warned holds the read errors of the last pass, so each is logged once, when it appears.
	warned map[string]bool
	// saveFailing: the last save failed (warned once).
	saveFailing bool
}

// Defaults.
const (
	DefaultChunkSize = 1 << 20
	DefaultMaxLine   = 64 << 10
)

// New checks the configuration and returns a scanner; nothing is read until Scan.
func New(cfg Config) (*Scanner, error) {
	if cfg.Rules == nil {
		return nil, errors.New("logscan: no rules")
	}
	if cfg.Since <= 0 {
		return nil, fmt.Errorf("logscan: look-back %s must be positive", cfg.Since)
	}
	if cfg.Window <= 0 {
		cfg.Window = cfg.Since
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.MaxLine <= 0 {
		cfg.MaxLine = DefaultMaxLine
	}
	if cfg.MaxLine > cfg.ChunkSize {
		return nil, fmt.Errorf("logscan: max line %d larger than the chunk %d", cfg.MaxLine, cfg.ChunkSize)
	}
	dec, err := journal.NewDecoder()
	if err != nil {
		return nil, fmt.Errorf("logscan: %w", err)
	}
	return &Scanner{cfg: cfg, reader: newChunkReader(cfg.ChunkSize, cfg.MaxLine), zstd: dec}, nil
}

// Close releases the decoder.
func (s *Scanner) Close() {
	s.zstd.Close()
}

// ScanStats says what a pass read, for the check's detail and the debug endpoint.
type ScanStats struct {
	FirstStart bool          `json:"firstStart"`
	Files      int           `json:"files"`
	Bytes      int64         `json:"bytes"`
	BadLines   int64         `json:"badLines,omitempty"`
	Journal    journal.Stats `json:"journal"`
	Matches    int64         `json:"matches"`
	Duration   string        `json:"duration"`
	// Sources lists what was found to read, so "no finding" can be told from "nothing read".
	Sources []string `json:"sources"`
	Errors  []string `json:"errors,omitempty"`
	// StateError is why the state could not be saved in the state dir (full, read-only); the
	// scan went on from memory.
	StateError string `json:"stateError,omitempty"`
}

const maxStatErrors = 20

func (st *ScanStats) addError(err error) {
	if len(st.Errors) < maxStatErrors {
		st.Errors = append(st.Errors, err.Error())
	}
}

// pass is the state of one Scan.
type pass struct {
	s      *Scanner
	ctx    context.Context
	now    time.Time
	cutoff time.Time
	old    *scanState
	next   *scanState
	stats  ScanStats
}

// Scan reads what was added to the node's logs since the last pass (on a first start: the
// look-back), updates the conditions and, with a state directory, saves where it stopped.
// Unreadable sources and a state that cannot be saved are reported in the stats, not as an
// error; the error is for a cancelled context.
func (s *Scanner) Scan(ctx context.Context) (ScanStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	p := &pass{s: s, ctx: ctx, now: s.cfg.Now()}
	p.cutoff = p.now.Add(-s.cfg.Since)
	if !s.loaded {
		st, err := loadState(s.cfg.StateDir)
		if err != nil {
			s.cfg.Log.Warn("log scan state", "err", err)
			p.stats.addError(err)
		}
		s.state, s.loaded = st, true
	}
	p.old = s.state
	p.stats.FirstStart = len(p.old.Streams) == 0 && !p.old.JournalSeen
	p.next = &scanState{
		Version:    stateVersion,
		Streams:    map[string]*streamState{},
		Journal:    map[string]*journalCursor{},
		Conditions: cloneConditions(p.old.Conditions),
	}
	p.podLogs()
	for _, f := range s.cfg.SyslogFiles {
		p.syslog(f)
	}
	p.journal()
	s.warnReadErrors(p.stats.Errors)
	if err := ctx.Err(); err != nil {
		// Keep the old state: what this pass read is read again next time, nothing is lost and,
		// since the conditions were not saved either, nothing counts twice after a restart.
		return p.stats, fmt.Errorf("log scan interrupted: %w", err)
	}
	p.expire()
	s.state = p.next
	p.stats.Duration = time.Since(start).Round(time.Millisecond).String()
	if err := s.state.save(s.cfg.StateDir, p.now); err != nil {
		// A full or read-only state dir loses nothing now: offsets and conditions stay in
		// memory and the findings are reported. Said once, until it can be saved again.
		p.stats.StateError = err.Error()
		if !s.saveFailing {
			s.cfg.Log.Warn("log scan state cannot be saved; offsets and conditions are kept in memory until it can "+
				"(a restart meanwhile reads the look-back again)", "dir", s.cfg.StateDir, "err", err)
		}
		s.saveFailing = true
	} else if s.saveFailing {
		s.cfg.Log.Info("log scan state saved again", "dir", s.cfg.StateDir)
		s.saveFailing = false
	}
	s.last = p.stats
	return p.stats, nil
}

// warnReadErrors logs the errors that the previous pass did not have: a log that cannot be read
// (permissions, a damaged journal) must not pass for a quiet node.
func (s *Scanner) warnReadErrors(errs []string) {
	now := make(map[string]bool, len(errs))
	for _, e := range errs {
		now[e] = true
		if !s.warned[e] {
			s.cfg.Log.Warn("cannot read node logs; evidence from them may be missing", "err", e)
		}
	}
	s.warned = now
}

// emit records a match.
func (p *pass) emit(r *compiledRule, source string, msg []byte, off int64, t time.Time, truncated bool, origin string) {
	line, cut := boundLine(msg)
	m := Match{
		Rule: r.Name, Code: r.Code,
		Sample: Sample{Source: source, Offset: off, Time: t.UTC(), Origin: origin, Line: line, Truncated: truncated || cut},
		Pod:    r.pod(msg),
	}
	c := p.next.Conditions[r.Name]
	if c == nil || c.episodeOver(r, t, p.s.cfg.Window) {
		c = &condition{}
		p.next.Conditions[r.Name] = c
	}
	c.add(m)
	p.stats.Matches++
	if p.s.cfg.OnMatch != nil {
		p.s.cfg.OnMatch(m)
	}
}

// expire drops conditions whose evidence left the window and those of rules no longer loaded.
func (p *pass) expire() {
	for name, c := range p.next.Conditions {
		r := p.s.rule(name)
		if r == nil || p.now.Sub(c.Last) > p.s.cfg.Window {
			delete(p.next.Conditions, name)
		}
	}
}

func (s *Scanner) rule(name string) *compiledRule {
	for _, r := range s.cfg.Rules.rules {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Findings returns the node-level findings of the conditions held, as of now, in rule order.
func (s *Scanner) Findings(now time.Time) []nodecheck.Finding {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []nodecheck.Finding{}
	if s.state == nil {
		return out
	}
	for _, r := range s.cfg.Rules.rules {
		c := s.state.Conditions[r.Name]
		if c == nil || now.Sub(c.Last) > s.cfg.Window {
			continue
		}
		out = append(out, c.finding(r, now))
	}
	return out
}

// LastStats returns the stats of the last pass.
func (s *Scanner) LastStats() ScanStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (p *pass) rulesFor(keep func(*compiledRule) bool) []*compiledRule {
	var out []*compiledRule
	for _, r := range p.s.cfg.Rules.rules {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// podLogs reads the container logs the rules select.
func (p *pass) podLogs() {
	dir := p.s.cfg.PodLogDir
	if dir == "" || len(p.rulesFor(func(r *compiledRule) bool { return r.readsType(SourcePod) })) == 0 {
		return
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			p.stats.addError(fmt.Errorf("listing pod logs: %w", err))
		}
		return
	}
	p.stats.Sources = append(p.stats.Sources, dir)
	for _, e := range ents {
		if p.ctx.Err() != nil {
			return
		}
		pd, ok := parsePodLogDir(dir, e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		containers, err := os.ReadDir(pd.path)
		if err != nil {
			p.stats.addError(fmt.Errorf("listing %s: %w", pd.path, err))
			continue
		}
		for _, c := range containers {
			if !c.IsDir() {
				continue
			}
			rules := p.rulesFor(func(r *compiledRule) bool { return r.wantsPod(pd.namespace, pd.name, c.Name()) })
			if len(rules) == 0 {
				continue
			}
			cdir := filepath.Join(pd.path, c.Name())
			files, err := containerLogFiles(cdir)
			if err != nil {
				p.stats.addError(err)
				continue
			}
			origin := pd.namespace + "/" + pd.name + "/" + c.Name()
			p.stream("pod:"+cdir, files, rules, origin, true)
		}
	}
}

// syslog reads one syslog file and its rotated copies.
func (p *pass) syslog(path string) {
	rules := p.rulesFor(func(r *compiledRule) bool { return r.readsType(SourceSyslog) })
	if len(rules) == 0 {
		return
	}
	files, err := syslogFiles(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			p.stats.addError(err)
		}
		return
	}
	if len(files) == 0 {
		return
	}
	p.stats.Sources = append(p.stats.Sources, path)
	p.stream("syslog:"+path, files, rules, "", false)
}

// stream reads the new part of each file of one stream.
func (p *pass) stream(key string, files []*logFile, rules []*compiledRule, origin string, cri bool) {
	prev := p.old.Streams[key]
	for _, lf := range files {
		if err := lf.readPrefix(); err != nil {
			p.stats.addError(fmt.Errorf("%s: %w", lf.path, err))
		}
	}
	pairs := identify(files, prev)
	next := &streamState{}
	m := newMatcher(rules)
	for i, lf := range files {
		if p.ctx.Err() != nil {
			break
		}
		st := pairs[i]
		if lf.prefix == nil {
			if st != nil {
				next.Files = append(next.Files, st) // unreadable for now: keep its position
			}
			continue // the error is in the stats
		}
		fs, err := p.file(lf, st, prev == nil, rules, m, origin, cri)
		if err != nil {
			p.stats.addError(fmt.Errorf("%s: %w", lf.path, err))
		}
		if fs != nil {
			next.Files = append(next.Files, fs)
		}
	}
	if p.ctx.Err() == nil {
		p.next.Streams[key] = next
	}
}

// file reads one file from where the state says, and returns its new state.
func (p *pass) file(lf *logFile, st *fileState, firstSight bool, rules []*compiledRule, m *matcher, origin string, cri bool) (*fileState, error) {
	if st != nil {
		// Carry the state over under the file's current name, and lengthen a short fingerprint
		// now that the file has grown (its first bytes were just checked to be the same).
		cp := *st
		st = &cp
		st.Path = lf.path
		if !lf.gz {
			st.Dev, st.Ino = lf.dev, lf.ino
		}
		if st.FPLen < fpSize && len(lf.prefix) > st.FPLen {
			st.FPLen, st.FP = len(lf.prefix), fingerprint(lf.prefix)
		}
		if st.Complete {
			return st, nil
		}
	} else {
		st = &fileState{Path: lf.path, Dev: lf.dev, Ino: lf.ino, FP: fingerprint(lf.prefix), FPLen: len(lf.prefix)}
		if lf.gz {
			st.Dev, st.Ino = 0, 0
		}
	}
	final := lf.gz || (lf.rotated && p.now.Sub(lf.mtime) >= finalAge)
	var cutoff time.Time
	if firstSight && st.Offset == 0 {
		cutoff = p.cutoff
		if lf.mtime.Before(cutoff) {
			// Entirely older than the look-back: remember it as read.
			st.Offset, st.Done, st.Complete = lf.size, lf.size, final
			if lf.gz {
				st.Offset, st.Done = 0, 0
			}
			return st, nil
		}
	}
	if !lf.gz && lf.size < st.Offset {
		// Same inode and first bytes but shorter: truncated and rewritten. Start over.
		st.Offset, st.Done = 0, 0
	}
	f, err := os.Open(lf.path)
	if err != nil {
		return st, fmt.Errorf("opening: %w", err)
	}
	defer f.Close()
	fsc := &fileScan{path: lf.path, origin: origin, rules: rules, m: m, done: st.Done, cutoff: cutoff}
	fsc.emit = func(r *compiledRule, msg []byte, off int64, t time.Time, truncated bool, from string) {
		p.emit(r, lf.path, msg, off, t, truncated, from)
	}
	var r io.Reader
	start := st.Offset
	if lf.gz {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return st, fmt.Errorf("reading gzip: %w", err)
		}
		defer zr.Close()
		if _, err := io.CopyN(io.Discard, zr, start); err != nil {
			return st, fmt.Errorf("skipping to %d: %w", start, err)
		}
		r = zr
	} else {
		if !cutoff.IsZero() && start == 0 {
			stamp := func(line []byte) (time.Time, bool) {
				if cri {
					l, err := ParseCRILine(line)
					return l.Time, err == nil
				}
				l, ok := ParseSyslogLine(line, p.now)
				return l.Time, ok
			}
			start = seekTime(f, lf.size, cutoff, stamp)
		}
		r = io.NewSectionReader(f, start, lf.size-start)
	}
	p.stats.Files++
	var h lineHandler
	var ch *criHandler
	if cri {
		ch = &criHandler{fs: fsc, maxLine: p.s.cfg.MaxLine}
		h = ch
	} else {
		h = &syslogHandler{fs: fsc, now: p.now}
	}
	next, err := p.s.reader.read(p.ctx, r, start, final, h)
	p.stats.Bytes += next - start
	p.stats.BadLines += fsc.badLines
	if err != nil {
		// Keep the old position: the part read is read again (and, Done unchanged, the
		// messages evaluated now are not counted twice only because this pass is not saved).
		return st, err
	}
	resume := next
	if ch != nil {
		if final {
			ch.flush()
		} else {
			resume = ch.resumeAt(next)
		}
	}
	st.Offset, st.Done = resume, max(st.Done, next)
	st.Complete = final
	return st, nil
}

// journal reads the journal files of the configured directories.
func (p *pass) journal() {
	rules := p.rulesFor(func(r *compiledRule) bool { return r.readsType(SourceJournal) })
	if len(rules) == 0 || len(p.s.cfg.JournalDirs) == 0 {
		p.next.JournalSeen = p.old.JournalSeen
		return
	}
	var files []string
	for _, d := range p.s.cfg.JournalDirs {
		found, err := journal.Files(d)
		if err != nil {
			p.stats.addError(err)
			continue
		}
		if len(found) > 0 {
			p.stats.Sources = append(p.stats.Sources, d)
		}
		files = append(files, found...)
	}
	firstStart := !p.old.JournalSeen
	for _, path := range files {
		if p.ctx.Err() != nil {
			return
		}
		if err := p.journalFile(path, rules, firstStart); err != nil {
			p.stats.addError(err)
		}
	}
	p.next.JournalSeen = true
}

func (p *pass) journalFile(path string, rules []*compiledRule, firstStart bool) error {
	j, err := journal.Open(path, journal.Options{MaxData: p.s.cfg.MaxLine, Decoder: p.s.zstd})
	if err != nil {
		// Keep where this file was read up to: a passing error must not make it new.
		for id, c := range p.old.Journal {
			if c.Path == path {
				p.next.Journal[id] = c
			}
		}
		return err
	}
	defer j.Close()
	id := j.ID()
	cur := p.old.Journal[id]
	var after uint64
	var since time.Time
	switch {
	case cur != nil:
		after = cur.Seqnum
	case firstStart:
		since = p.cutoff
		if seqnum, rt := j.Tail(); !rt.IsZero() && rt.Before(since) {
			p.next.Journal[id] = &journalCursor{Path: path, Seqnum: seqnum}
			return nil
		}
	}
	p.stats.Files++
	// An iteration that stops at a damaged or half-written object is not an error: the cursor
	// stays before it and the next pass reads it (the damage is counted in the stats).
	it := j.Entries(p.ctx, after, since)
	for it.Next() {
		e := it.Entry()
		origin := e.Unit
		if origin == "" {
			origin = e.Identifier
		}
		for _, r := range rules {
			if !r.wantsJournal(e.Unit, e.Identifier, e.Comm) || !r.mayMatch(e.Message) || !r.re.Match(e.Message) {
				continue
			}
			p.emit(r, path, e.Message, int64(e.Offset), e.Realtime, e.Truncated, origin)
		}
	}
	p.stats.Journal.Add(j.Stats())
	p.next.Journal[id] = &journalCursor{Path: path, Seqnum: it.Last()}
	return it.Err()
}
