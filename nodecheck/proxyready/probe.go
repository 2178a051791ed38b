package proxyready

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/ctnetlink"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
)

// ReadyPath is pilot-agent's readiness endpoint on its status port: what the guide tells an app
// to poll until it answers 200, and what kubelet's probes of istio-proxy reach through Envoy.
const ReadyPath = "/healthz/ready"

// DefaultStatusPort is pilot-agent's status port unless status.sidecar.istio.io/port says otherwise.
const DefaultStatusPort = 15020

// DefaultProbeTimeout bounds one probe: the timeoutSeconds of the readiness probe Istio's injector
// gives istio-proxy. pilot-agent's handler asks Envoy's admin port before it answers, so a busy
// proxy can take a moment; a probe that never answers is a timeout, not a hang.
const DefaultProbeTimeout = 3 * time.Second

// maxConnect bounds the connection: on loopback it is established or refused at once, so a
// connect that waits is something dropping packets, which no longer wait will fix.
const maxConnect = time.Second

// Bounds on what is read from the status port, whatever answers there.
const (
	maxResponseBytes = 16 << 10
	maxBody          = 1 << 10
)

// Outcome is how a probe went.
type Outcome string

// Outcomes of a probe.
const (
	// OutcomeReady: the status port answered 200.
	OutcomeReady Outcome = "ready"
	// OutcomeNotReady: the status port answered with another status.
	OutcomeNotReady Outcome = "not-ready"
	// OutcomeRefused: nothing listens on the status port in the pod (connection refused).
	OutcomeRefused Outcome = "refused"
	// OutcomeTimeout: no connection or no answer within the timeout.
	OutcomeTimeout Outcome = "timeout"
	// OutcomeFailed: anything else (connection reset, not HTTP, loopback down).
	OutcomeFailed Outcome = "failed"
)

// Probe is the result of one GET of the readiness endpoint inside a pod's network namespace.
type Probe struct {
	URL     string  `json:"url"`
	Outcome Outcome `json:"outcome"`
	// Status is the HTTP status code when the port answered.
	Status int `json:"status,omitempty"`
	// Body is the start of the answer's body, when it had one (pilot-agent's own has none).
	Body string `json:"body,omitempty"`
	// Error is the network or protocol error behind refused, timeout and failed.
	Error string `json:"error,omitempty"`
	// TraceLeft says why the probe's conntrack entry could not be deleted afterwards.
	TraceLeft string        `json:"traceLeft,omitempty"`
	At        time.Time     `json:"at"`
	Duration  time.Duration `json:"durationNs"`
}

// Prober asks a pod's proxy whether it is ready. The error is for a probe that could not be made
// (the namespace is gone): a proxy that does not answer is a Probe outcome.
type Prober interface {
	Probe(ctx context.Context, netnsPath string, port uint16) (Probe, error)
}

// NetnsProber probes from inside the pod's network namespace, the way the app itself would reach
// localhost. The socket is opened on a thread that has entered the namespace (innetns.Do), and a
// socket belongs for its whole life to the namespace it was created in: the request cannot leave
// the pod, and no other goroutine ever runs in the pod's namespace. It dials 127.0.0.1 without
// resolving "localhost" (no resolver is consulted, in the pod or on the node), sends one HTTP/1.1
// request without keep-alive or proxy, and reads a bounded answer.
//
// The probe is what kubelet and `pilot-agent wait` do to the same endpoint, and then leaves
// nothing behind: the connection is closed by a reset (no TIME_WAIT socket on either side) and
// its conntrack entry, made by the SYN and found by its source port, is deleted. pilot-agent logs
// the result when it is a failure; nothing else changes in the pod.
type NetnsProber struct {
	// Timeout bounds the whole exchange (DefaultProbeTimeout when zero).
	Timeout time.Duration
}

// Probe GETs http://localhost:PORT/healthz/ready inside the namespace at netnsPath.
func (p NetnsProber) Probe(ctx context.Context, netnsPath string, port uint16) (res Probe, err error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	start := time.Now()
	res = Probe{URL: "http://localhost:" + strconv.Itoa(int(port)) + ReadyPath, At: start.UTC()}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
	var conn net.Conn
	var dialErr error
	var ct *ctnetlink.Conn
	var ctErr error
	var local netip.AddrPort
	err = innetns.Do(ctx, netnsPath, func() error {
		// Both sockets belong to the pod's namespace for life, wherever they are used next.
		ct, ctErr = ctnetlink.Open(ctx)
		// The connect completes on this locked thread too: on loopback it is immediate.
		d := net.Dialer{Timeout: min(timeout, maxConnect), Control: bindLoopback(&local)}
		conn, dialErr = d.DialContext(ctx, "tcp4", addr.String())
		return nil
	})
	if err != nil {
		return Probe{}, fmt.Errorf("probing %s in %s: %w", res.URL, netnsPath, err)
	}
	defer func() {
		// Runs after the deferred close of conn: the reset is sent, no packet of the
		// connection follows, and its entry can go.
		switch {
		case ctErr != nil:
			res.TraceLeft = ctErr.Error()
		case local.IsValid():
			if err := ct.Forget(ctnetlink.Tuple{Src: local, Dst: addr}); err != nil {
				res.TraceLeft = err.Error()
			}
		}
		if ct != nil {
			ct.Close()
		}
	}()
	if dialErr == nil {
		defer closeByReset(conn)
	}
	var status int
	var body string
	if err = dialErr; err == nil {
		status, body, err = get(ctx, conn, port)
	}
	res.Duration = time.Since(start)
	if perr := parent.Err(); perr != nil {
		// The check was cancelled: that says nothing about the proxy.
		return Probe{}, fmt.Errorf("probing %s in %s: %w", res.URL, netnsPath, perr)
	}
	if err != nil {
		res.classify(ctx, err)
		return res, nil
	}
	res.Status, res.Body = status, body
	res.Outcome = OutcomeNotReady
	if status == http.StatusOK {
		res.Outcome = OutcomeReady
	}
	return res, nil
}

// bindLoopback binds the socket to 127.0.0.1 and an ephemeral port before it connects, and
// stores that port in local: the connection's conntrack tuple is known even when the connect
// fails or times out, and leaves a SYN_SENT entry.
func bindLoopback(local *netip.AddrPort) func(string, string, syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var err error
		cerr := rc.Control(func(fd uintptr) {
			if err = unix.Bind(int(fd), &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				err = fmt.Errorf("binding the probe's socket: %w", err)
				return
			}
			sa, gerr := unix.Getsockname(int(fd))
			if gerr != nil {
				err = fmt.Errorf("reading the probe's source port: %w", gerr)
				return
			}
			if in4, ok := sa.(*unix.SockaddrInet4); ok {
				*local = netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
			}
		})
		if cerr != nil {
			return cerr
		}
		return err
	}
}

// closeByReset closes conn with a reset rather than a FIN: neither end is left in TIME_WAIT and no
// late ACK can make a new conntrack entry after the probe's own is deleted.
func closeByReset(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// get sends the request on conn and reads the status and the start of the body.
func get(ctx context.Context, conn net.Conn, port uint16) (int, string, error) {
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return 0, "", fmt.Errorf("setting the probe deadline: %w", err)
	}
	// A cancelled context ends a read that is waiting now rather than at the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := "GET " + ReadyPath + " HTTP/1.1\r\nHost: localhost:" + strconv.Itoa(int(port)) +
		"\r\nUser-Agent: meshdoctor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, "", fmt.Errorf("sending the probe: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(io.LimitReader(conn, maxResponseBytes), 4096), nil)
	if err != nil {
		return 0, "", fmt.Errorf("reading the answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		// The status is what counts; a body cut short is still evidence.
		body = append(body, " [body cut short: "+err.Error()+"]"...)
	}
	return resp.StatusCode, strings.TrimSpace(strings.ToValidUTF8(string(body), "\uFFFD")), nil
}

// classify sets the outcome of a probe that got no HTTP answer.
func (p *Probe) classify(ctx context.Context, err error) {
	p.Error = err.Error()
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		p.Outcome = OutcomeRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout(), ctx.Err() != nil:
		p.Outcome = OutcomeTimeout
	default:
		p.Outcome = OutcomeFailed
	}
}
