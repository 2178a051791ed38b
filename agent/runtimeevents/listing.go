package runtimeevents

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
)

// listingSettle is how long a subscription must have been live before a listing it covers is
// kept: containerd registers the subscriber when its handler runs, a moment after Subscribe
// returns here, and an event published in between would be missed.
const listingSettle = time.Second

// Listing keeps the node's last pod listing while containerd's event subscription is live and
// has said nothing since: the agent lists the node on every pass (a pass every few seconds at
// 110 pods), and with nothing started, exited or changed the answer is the one it had. Every
// event of a container or task in the CRI namespace (other than exec processes), a subscription
// that starts or ends, a listing that carries a discovery error, or a listing older than MaxAge
// makes the next Discover ask the runtime again. MaxAge bounds what an event lost by containerd
// could hide to one re-check interval, which is what a periodic re-check promises anyway.
//
// A Listing is safe for concurrent use. It is a discover.Runtime: Close closes the runtime.
type Listing struct {
	Runtime discover.Runtime
	// MaxAge is the longest a listing is served; zero or less serves none (every Discover asks
	// the runtime).
	MaxAge time.Duration

	mu        sync.Mutex
	epoch     uint64 // moved by every event and every change of the subscription
	live      bool
	liveSince time.Time
	cached    []nodecheck.Target
	cachedAt  time.Time
	hasCache  bool
	served    ListingStats
}

// ListingStats counts how each Discover was answered.
type ListingStats struct {
	// Listed asked the runtime; Cached were served the last listing.
	Listed, Cached uint64
}

// Discover returns the cached listing when it still holds and ctx does not ask for a fresh one
// (discover.Fresh), else the runtime's. The returned
// slice is the caller's: it may set fields of its targets (as cmd's CNI exclusions do); the
// targets' maps and slices are shared with the cache and must not be modified.
func (l *Listing) Discover(ctx context.Context) ([]nodecheck.Target, error) {
	l.mu.Lock()
	start := time.Now()
	if l.hasCache && l.live && start.Sub(l.cachedAt) < l.MaxAge && !discover.WantsFresh(ctx) {
		out := slices.Clone(l.cached)
		l.served.Cached++
		l.mu.Unlock()
		return out, nil
	}
	epoch := l.epoch
	keep := l.live && l.MaxAge > 0 && !start.Before(l.liveSince.Add(listingSettle))
	l.served.Listed++
	l.mu.Unlock()

	targets, err := l.Runtime.Discover(ctx)
	if err != nil {
		return nil, err
	}
	keep = keep && !slices.ContainsFunc(targets, func(t nodecheck.Target) bool { return t.DiscoveryError != "" })
	l.mu.Lock()
	defer l.mu.Unlock()
	// Kept only when nothing happened while the runtime was answering: an event in between may
	// or may not be in this listing.
	if keep && l.epoch == epoch {
		l.cached, l.cachedAt, l.hasCache = slices.Clone(targets), start, true
	}
	return targets, nil
}

// Close closes the runtime.
func (l *Listing) Close() error { return l.Runtime.Close() }

// Stats says how the listings so far were answered.
func (l *Listing) Stats() ListingStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.served
}

// changed drops the cached listing: something on the node changed.
func (l *Listing) changed() { l.moved(func() {}) }

// subscribed records that the event subscription started (live) or ended.
func (l *Listing) subscribed(live bool) {
	l.moved(func() {
		l.live = live
		if live {
			l.liveSince = time.Now()
		}
	})
}

// moved drops the cached listing and moves the epoch (so that a listing under way is not kept),
// with also done under the lock. A nil Listing ignores it.
func (l *Listing) moved(also func()) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.epoch++
	l.cached, l.hasCache = nil, false
	also()
}
