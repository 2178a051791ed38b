package debughttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Options bound what one listener accepts, so that a slow client, a flood or junk cannot stall
// the agent or grow its memory: every connection costs a goroutine and two 4 KiB buffers, every
// request in flight a copy of the page it is served. Zero fields take the defaults below.
type Options struct {
	// ReadHeaderTimeout bounds reading a request's headers: a slowloris client is cut off then.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading the whole request, headers and body.
	ReadTimeout time.Duration
	// WriteTimeout bounds a response from the end of its headers' read to its last byte, and
	// the handler's context too (the TokenReview a token costs). The slowest pages of a node of
	// 110 pods take milliseconds (BenchmarkPages: the HTML page 4 ms, /metrics with per-pod
	// series 2.5 ms, the report 1 ms); this leaves room for a slow reader and an API server
	// that answers late.
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no next request.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request line and headers (net/http allows 4 KiB of slack on
	// top); more is answered 431.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request's body; every endpoint is GET and reads none, so more is
	// answered 413.
	MaxBodyBytes int64
	// MaxInFlight bounds requests served at once; one more is answered 503 with Retry-After at
	// once. /healthz and /readyz are not counted: they cost nothing, and the kubelet's probes
	// must not fail because /metrics is flooded.
	MaxInFlight int
	// MaxConns bounds connections open at once; further ones wait in the kernel's accept
	// queue until one closes: a slow one at ReadHeaderTimeout, ReadTimeout or WriteTimeout, an
	// idle one at IdleTimeout at the latest. A client holding every connection thus delays the
	// kubelet's probes by that much: the price of bounded memory. Hence the short defaults of
	// those three, under the chart's 5 s probe timeout (every request is a GET of one packet,
	// and a scraper every 15 s or more reuses no connection kept for 2 minutes anyway); a page
	// is small enough for the kernel's buffers, so a reader too slow for it holds its
	// connection idle, not for WriteTimeout.
	MaxConns int
	// ShutdownGrace bounds the shutdown once ctx ends.
	ShutdownGrace time.Duration
}

// The defaults. Pages take milliseconds, so 2 in flight serve any real load (two Prometheus
// replicas, `meshdoctor cluster`, a person); 1,000 requests at once on a full node's pages grow
// the server's RSS by 4–6 MiB with them, by 50 without (TestThousandConcurrentRequests), and
// the agent's, on its three listeners, by 9–10 MiB (11 with 4 in flight, 40–45 without limits).
const (
	DefaultReadHeaderTimeout = 3 * time.Second
	DefaultReadTimeout       = 4 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 4 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxBodyBytes      = 4 << 10
	DefaultMaxInFlight       = 2
	DefaultMaxConns          = 32
	DefaultShutdownGrace     = 5 * time.Second
)

// withDefaults fills the zero fields.
func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&o.ReadTimeout, DefaultReadTimeout)
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.IdleTimeout, DefaultIdleTimeout)
	def(&o.ShutdownGrace, DefaultShutdownGrace)
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	return o
}

// unlimited reports whether MaxInFlight does not count a path (see Options.MaxInFlight).
func unlimited(path string) bool {
	return path == "/healthz" || path == "/readyz"
}

// limit serves next with at most o.MaxInFlight requests at once and bodies of at most
// o.MaxBodyBytes. Over the limit it answers 503 at once instead of queueing: a scraper retries
// at its next interval, a person in a second.
func limit(next http.Handler, o Options) http.Handler {
	slots := make(chan struct{}, o.MaxInFlight)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !limitBody(w, r, o.MaxBodyBytes) {
			return
		}
		if unlimited(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many requests in flight, retry in a second", http.StatusServiceUnavailable)
			return
		}
		defer func() { <-slots }()
		ctx, cancel := context.WithTimeout(r.Context(), o.WriteTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// limitBody reads and drops the request's body, at most max bytes of it, so a chunked body
// without Content-Length is bounded as well; more is answered 413 and false returned. No
// handler here reads a body, so none is lost.
func limitBody(w http.ResponseWriter, r *http.Request, max int64) bool {
	if r.ContentLength > max {
		tooLarge(w, max)
		return false
	}
	if r.Body == nil || r.Body == http.NoBody {
		return true
	}
	r.Body = http.MaxBytesReader(w, r.Body, max)
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			tooLarge(w, max)
		} else {
			http.Error(w, "cannot read the request body", http.StatusBadRequest)
		}
		return false
	}
	return true
}

func tooLarge(w http.ResponseWriter, max int64) {
	// The rest of the body is not read; the connection cannot be reused.
	w.Header().Set("Connection", "close")
	http.Error(w, "request body over "+strconv.FormatInt(max, 10)+" bytes", http.StatusRequestEntityTooLarge)
}
