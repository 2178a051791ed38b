// Package debughttp serves the agent over HTTP: health and readiness, the Prometheus exposition,
// and the node debug endpoint (the report as `check -o json` prints it, one pod's findings with the
// raw rules read from its netns, and an HTML page for a person behind `kubectl port-forward`).
// The debug endpoint listens on loopback by default; on any other address it requires a bearer
// token that the API server accepts (TokenReview) and authorises for the request's path
// (SubjectAccessReview on a non-resource URL), as kubelet and kube-rbac-proxy do. The report alone
// can also be served on a listener of its own for `meshdoctor cluster` (ReportHandler). Every
// listener is served within Options: timeouts on reading headers, whole requests, responses and
// idle connections, bounded headers and bodies, and caps on requests in flight (503 beyond) and
// on open connections.
package debughttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/report"
)

// Source is the agent's state as the endpoint reads it.
type Source interface {
	Ready() bool
	Report() *nodecheck.Report
	Pod(key string) (agent.PodState, bool)
	Pods() []agent.PodState
	Node() agent.NodeState
	LastSweep() time.Time
	Name() string
}

// Authorizer decides whether a request may see the debug endpoint.
type Authorizer interface {
	// Authorize returns the user when the bearer token may GET path; an error when it cannot
	// tell (the API server is unreachable).
	Authorize(ctx context.Context, token, path string) (user string, allowed bool, err error)
}

// MetricsHandler serves /metrics, /healthz and /readyz: what the metrics port offers.
func MetricsHandler(src Source, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	addHealth(mux, src)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func addHealth(mux *http.ServeMux, src Source) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !src.Ready() {
			http.Error(w, "first sweep of the node not done yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
}

// DebugHandler serves the debug endpoint: everything MetricsHandler does, plus /debug/report,
// /debug/pods/{namespace}/{name} and the HTML page at /. With a non-nil authorizer every request
// needs a bearer token it allows.
func DebugHandler(src Source, reg *prometheus.Registry, auth Authorizer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	addHealth(mux, src)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+ReportPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := report.WriteJSON(w, src.Report()); err != nil {
			log.Warn("writing /debug/report", "err", err)
		}
	})
	mux.HandleFunc("GET /debug/pods/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("namespace") + "/" + r.PathValue("name")
		p, ok := src.Pod(key)
		if !ok {
			http.Error(w, "no pod "+key+" on this node", http.StatusNotFound)
			return
		}
		writeJSON(w, log, podDetail(p))
	})
	mux.HandleFunc("GET "+NodePath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, log, nodeDetail(src.Node()))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := writePage(w, src); err != nil {
			log.Warn("writing the debug page", "err", err)
		}
	})
	if auth == nil {
		return mux
	}
	return requireToken(mux, auth, log)
}

// NodePath serves the node checks' findings and details (istio-cni's install with the CNI chain's
// timeline, the netfilter features, the log scanner's state).
const NodePath = "/debug/node"

// NodeDetail is what NodePath serves.
type NodeDetail struct {
	Checked  time.Time            `json:"checked,omitzero"`
	Findings []nodecheck.Finding  `json:"findings"`
	Runs     []nodecheck.CheckRun `json:"runs"`
	// Details are each node check's own detail, by check name.
	Details map[string]any `json:"details"`
}

func nodeDetail(n agent.NodeState) NodeDetail {
	d := NodeDetail{Checked: n.Checked, Findings: n.Findings, Runs: n.Runs, Details: n.Details}
	if d.Findings == nil {
		d.Findings = []nodecheck.Finding{}
	}
	if d.Runs == nil {
		d.Runs = []nodecheck.CheckRun{}
	}
	if d.Details == nil {
		d.Details = map[string]any{}
	}
	return d
}

// PodDetail is what /debug/pods/{namespace}/{name} serves.
type PodDetail struct {
	nodecheck.PodReport
	Since      time.Time             `json:"since"`
	Checked    time.Time             `json:"checked"`
	Why        string                `json:"why"`
	SandboxID  string                `json:"sandboxID,omitempty"`
	Containers []nodecheck.Container `json:"containers,omitempty"`
	// Details are each check's own detail: for the capture check, the raw rules read.
	Details map[string]any `json:"details"`
}

func podDetail(p agent.PodState) PodDetail {
	return PodDetail{
		PodReport: p.Outcome.Pod, Since: p.Since, Checked: p.Checked, Why: p.Why,
		SandboxID: p.Target.SandboxID, Containers: p.Target.Containers, Details: p.Outcome.Details,
	}
}

func writeJSON(w http.ResponseWriter, log *slog.Logger, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		log.Warn("writing JSON", "err", err)
	}
}

// IsLoopback reports whether a listen address serves loopback only (so no token is needed).
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Serve listens on addr and serves h within opts until ctx ends, then shuts down within
// opts.ShutdownGrace.
func Serve(ctx context.Context, addr string, h http.Handler, opts Options) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return ServeListener(ctx, ln, h, opts)
}

// ServeListener serves h on ln within opts until ctx ends, then shuts down within
// opts.ShutdownGrace. It closes ln.
func ServeListener(ctx context.Context, ln net.Listener, h http.Handler, opts Options) error {
	opts = opts.withDefaults()
	srv := &http.Server{
		Handler:           limit(h, opts),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
	}
	addr := ln.Addr()
	ln = netutil.LimitListener(ln, opts.MaxConns)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving on %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Past the grace, connections still open are closed rather than left to their timeouts.
		_ = srv.Close()
		<-done
		return fmt.Errorf("shutting down %s: %w", addr, err)
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", addr, err)
	}
	return nil
}
