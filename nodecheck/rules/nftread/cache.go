package nftread

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// Defaults of a Cache's bounds.
const (
	// DefaultMaxAge outlives several of the agent's re-checks of a pod (one a minute), so a
	// live pod keeps its entry, and a pod gone for that long has had its entry dropped.
	DefaultMaxAge = 5 * time.Minute
	// DefaultMaxEntries is well above the pods a node runs (kubelet's default is 110).
	DefaultMaxEntries = 1024
)

// confirmGap is how long after the read that stored an entry a second read at the same
// generation must start for the entry to be served. nf_tables_commit bumps the generation
// before it applies the transaction (it flips the generation cursor and then, one by one,
// applies chain policy changes and unlinks deleted objects), and dumps run under RCU without the
// commit mutex: a read in that window gets the new generation, the same before and after, and
// a state that is not yet the new one. Uncached, the next read sees the settled state; cached,
// the half-applied one would be served until the next transaction, maybe for the pod's life.
// So an entry is served only once a read started this long after it, at the same generation,
// decoded to an equal Result: no commit stays half-applied for a second.
const confirmGap = time.Second

// Cache keeps the decoded Result of each network namespace read through it, with the ruleset
// generation it was read at, and serves a later read of the same namespace at the same
// generation from memory: one NFT_MSG_GETGEN round trip instead of every dump and the decoding.
// A nil *Cache caches nothing (every read dumps), and the zero Cache is ready to use. A Cache is
// safe for concurrent use.
//
// A namespace is known by its netns cookie (SO_NETNS_COOKIE, Linux ≥ 5.14, read on the netlink
// socket itself), which the kernel never gives to another namespace while it runs: not its
// inode, which a later namespace can reuse, nor its generation, which two namespaces written by
// the same istio-init share. Without a cookie (older kernels) nothing is cached.
//
// An entry is stored only when the ruleset generation was the same before and after its read
// (so no transaction was committed in between, and the replies' own generation agrees), when
// nothing in the Result can change without a transaction (no undecoded expression, whose data
// may be runtime state; no dynamic or timeout set), and it is served only once confirmed (see
// confirmGap). Every Result returned is the caller's own copy: changing it changes no entry.
//
// Memory: an entry holds a copy of its decoded Result (rule text, chain and table names, set
// keys), not the raw dumps, and a few words of bookkeeping. Measured on the stored snapshots
// (the heap kept by 2000 decoded and copied Results), Istio's default dual-stack sidecar rules
// take about 6 KB an entry and its TPROXY rules 10–12 KB (BenchmarkCloneResult's B/op, 5.5 KB, is
// the copy without the strings it shares): DefaultMaxEntries entries of 12 KB are at most about
// 12 MB, a node's 110 pods about 1.3 MB. Entries not read for MaxAge are dropped whenever a new
// entry is stored (and an expired one when it is looked up), and beyond MaxEntries the least
// recently read one goes.
type Cache struct {
	// MaxAge drops an entry whose namespace has not been read for this long (a deleted pod's);
	// 0 means DefaultMaxAge. Set before the first read.
	MaxAge time.Duration
	// MaxEntries bounds the entries; 0 means DefaultMaxEntries. Set before the first read.
	MaxEntries int

	mu      sync.Mutex
	entries map[uint64]*cacheEntry // by netns cookie
	stats   CacheStats
	now     func() time.Time // time.Now unless a test moves the clock
}

type cacheEntry struct {
	gen uint32
	// res is the cache's own copy; it is never changed, only replaced, and never handed out.
	res       *Result
	confirmed bool
	stored    time.Time // when the read that stored res ended
	used      time.Time // the last read of the namespace, for MaxAge and eviction
}

// CacheStats counts what a Cache did.
type CacheStats struct {
	// Hits are reads served from an entry: one GETGEN, no dump.
	Hits uint64
	// Dumps are reads that dumped the ruleset: first reads, confirmations, changed rulesets,
	// and the Uncacheable ones.
	Dumps uint64
	// Uncacheable are the dumps whose Result could not be stored: no netns cookie, a ruleset
	// that changed during the read, a Result that can change without a transaction.
	Uncacheable uint64
	// Entries is the number of namespaces held now.
	Entries int
}

// Stats returns the counts so far; a nil Cache has none.
func (c *Cache) Stats() CacheStats {
	if c == nil {
		return CacheStats{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = len(c.entries)
	return s
}

// Read is the package's Read through the cache.
func (c *Cache) Read(ctx context.Context, netnsPath string) (*Result, error) {
	conn, err := dialIn(ctx, netnsPath)
	if err != nil {
		return nil, err
	}
	return c.readOn(ctx, conn, netnsPath)
}

// ReadHere is the package's ReadHere through the cache.
func (c *Cache) ReadHere(ctx context.Context, where string) (*Result, error) {
	conn, err := dialHere(ctx, where)
	if err != nil {
		return nil, err
	}
	return c.readOn(ctx, conn, where)
}

// keyedRead is what one read through the cache learnt over the socket.
type keyedRead struct {
	hit        *Result   // served from an entry
	snap       *snapshot // dumped otherwise
	keyed      bool      // cookie and gen are known
	cookie     uint64
	gen        uint32 // the generation before the dumps
	consistent bool   // the same generation after them, and in every reply
	start      time.Time
}

func (c *Cache) readOn(ctx context.Context, conn *netlink.Conn, where string) (*Result, error) {
	var kr keyedRead
	err := exchange(ctx, conn, where, func(t *transport, raw syscall.RawConn) error {
		if c != nil {
			kr.start = c.clock()
			kr.cookie, kr.keyed = netnsCookie(raw)
		}
		if kr.keyed {
			gen, err := generation(t)
			if err != nil {
				kr.keyed = false // read as if uncached: the dumps report what is wrong
			} else {
				kr.gen = gen
				if kr.hit = c.lookup(kr.cookie, gen); kr.hit != nil {
					return nil
				}
			}
		}
		var err error
		if kr.snap, err = fetch(t); err != nil {
			return err
		}
		if kr.keyed {
			after, err := generation(t)
			kr.consistent = err == nil && after == kr.gen && repliesAt(kr.snap, kr.gen)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if kr.hit != nil {
		return kr.hit, nil
	}
	res, volatile, err := decodeSnapshot(kr.snap)
	if err != nil {
		if c != nil {
			c.offer(kr, nil, false)
		}
		return nil, fmt.Errorf("decoding nftables of %s: %w", where, err)
	}
	if c != nil {
		c.offer(kr, res, kr.keyed && kr.consistent && !volatile)
	}
	return res, nil
}

// netnsCookie reads the cookie of the namespace the socket lives in; false when the kernel has
// none to give (before 5.14: ENOPROTOOPT).
func netnsCookie(raw syscall.RawConn) (uint64, bool) {
	var cookie uint64
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		cookie, sockErr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil || sockErr != nil {
		return 0, false
	}
	// The kernel's cookies start at 1; 0 would be no identity at all.
	return cookie, cookie != 0
}

// repliesAt reports whether every reply of the snapshot carries gen's low 16 bits.
func repliesAt(s *snapshot, gen uint32) bool {
	var g generations
	for _, msgs := range [][][]byte{s.Tables, s.Chains, s.Rules, s.Sets, s.Elems} {
		if len(msgs) > 0 {
			g.observe(msgs)
		}
	}
	return !g.changed && (!g.seen || g.gen == uint16(gen))
}

func (c *Cache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (c *Cache) maxAge() time.Duration {
	if c.MaxAge > 0 {
		return c.MaxAge
	}
	return DefaultMaxAge
}

func (c *Cache) maxEntries() int {
	if c.MaxEntries > 0 {
		return c.MaxEntries
	}
	return DefaultMaxEntries
}

// lookup returns a copy of the confirmed entry of the namespace cookie at generation gen, or nil.
func (c *Cache) lookup(cookie uint64, gen uint32) *Result {
	c.mu.Lock()
	now := c.clock()
	e := c.entries[cookie]
	if e != nil && now.Sub(e.used) > c.maxAge() {
		delete(c.entries, cookie)
		e = nil
	}
	if e == nil || e.gen != gen || !e.confirmed {
		c.mu.Unlock()
		return nil
	}
	e.used = now
	c.stats.Hits++
	res := e.res // never changed once stored, so copied outside the lock
	c.mu.Unlock()
	return cloneResult(res)
}

// offer records a dumped read: it stores, confirms or (when not cacheable) drops the entry of
// its namespace. res stays the caller's; the entry gets its own copy.
func (c *Cache) offer(kr keyedRead, res *Result, cacheable bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Dumps++
	if !cacheable {
		c.stats.Uncacheable++
		if kr.keyed {
			// Whatever it held is of another generation, or of this one read badly.
			delete(c.entries, kr.cookie)
		}
		return
	}
	now := c.clock()
	if e := c.entries[kr.cookie]; e != nil && e.gen == kr.gen {
		e.used = now
		switch {
		case e.confirmed:
			return // a concurrent read confirmed it meanwhile
		case !reflect.DeepEqual(e.res, res):
			// One of the two reads saw a transaction half-applied: start over with this one.
			e.res, e.stored = cloneResult(res), now
		case kr.start.Sub(e.stored) >= confirmGap:
			e.confirmed = true
		}
		return
	}
	c.evict(now)
	if c.entries == nil {
		c.entries = make(map[uint64]*cacheEntry)
	}
	c.entries[kr.cookie] = &cacheEntry{gen: kr.gen, res: cloneResult(res), stored: now, used: now}
}

// evict drops the entries not read for MaxAge and, when that leaves no room for one more, the
// least recently read ones. c.mu is held.
func (c *Cache) evict(now time.Time) {
	for k, e := range c.entries {
		if now.Sub(e.used) > c.maxAge() {
			delete(c.entries, k)
		}
	}
	for len(c.entries) >= c.maxEntries() {
		var oldest uint64
		var oldestUsed time.Time
		first := true
		for k, e := range c.entries {
			if first || e.used.Before(oldestUsed) {
				oldest, oldestUsed, first = k, e.used, false
			}
		}
		delete(c.entries, oldest)
	}
}

// cloneResult returns a deep copy of r that shares no memory with it that can be written (strings
// are immutable and shared), with nil and empty slices kept as they were. Each table's chains,
// each chain's rules and each chain's matches are one allocation, each slice capped so that an
// append to one grows a new array rather than overwriting its neighbour.
func cloneResult(r *Result) *Result {
	if r == nil {
		return nil
	}
	out := &Result{OtherTables: slices.Clone(r.OtherTables)}
	if r.Sets != nil {
		out.Sets = make([]*rules.RuleSet, len(r.Sets))
		for i, s := range r.Sets {
			out.Sets[i] = cloneRuleSet(s)
		}
	}
	if r.NamedSets != nil {
		out.NamedSets = make([]NamedSet, len(r.NamedSets))
		for i, s := range r.NamedSets {
			out.NamedSets[i] = NamedSet{Table: s.Table, Name: s.Name, Keys: cloneKeys(s.Keys)}
		}
	}
	return out
}

func cloneRuleSet(s *rules.RuleSet) *rules.RuleSet {
	if s == nil {
		return nil
	}
	out := &rules.RuleSet{Backend: s.Backend, Family: s.Family}
	if s.Tables == nil {
		return out
	}
	out.Tables = make([]*rules.Table, len(s.Tables))
	tables := make([]rules.Table, len(s.Tables))
	for i, t := range s.Tables {
		if t == nil {
			continue
		}
		tables[i] = rules.Table{Name: t.Name, Origin: t.Origin, Chains: cloneChains(t.Chains)}
		out.Tables[i] = &tables[i]
	}
	return out
}

func cloneChains(cs []*rules.Chain) []*rules.Chain {
	if cs == nil {
		return nil
	}
	out := make([]*rules.Chain, len(cs))
	chains := make([]rules.Chain, len(cs))
	for i, c := range cs {
		if c == nil {
			continue
		}
		chains[i] = rules.Chain{Name: c.Name, Builtin: c.Builtin, Policy: c.Policy, Rules: cloneRules(c.Rules)}
		out[i] = &chains[i]
	}
	return out
}

func cloneRules(rs []rules.Rule) []rules.Rule {
	if rs == nil {
		return nil
	}
	out := slices.Clip(slices.Clone(rs))
	n := 0
	for _, r := range rs {
		n += len(r.Matches)
	}
	matches := make([]rules.Match, 0, n)
	for i, r := range rs {
		if r.Matches == nil {
			continue
		}
		from := len(matches)
		matches = append(matches, r.Matches...)
		out[i].Matches = matches[from:len(matches):len(matches)]
	}
	return out
}

func cloneKeys(keys [][]byte) [][]byte {
	if keys == nil {
		return nil
	}
	out := make([][]byte, len(keys))
	n := 0
	for _, k := range keys {
		n += len(k)
	}
	buf := make([]byte, 0, n)
	for i, k := range keys {
		if k == nil {
			continue
		}
		from := len(buf)
		buf = append(buf, k...)
		out[i] = buf[from:len(buf):len(buf)]
	}
	return out
}
