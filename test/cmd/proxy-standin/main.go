// Command proxy-standin stands in for istio-proxy in the test bed's pods, where Envoy cannot run:
// it answers 200 on pilot-agent's readiness URL (127.0.0.1:15020/healthz/ready), so the pod's
// proxy is ready, and listens where a ready Envoy has its virtual outbound (15001) and inbound
// (15006) listeners, the sockets the capture rules redirect to. Like Envoy's listeners, those two
// are wildcard, both families, with SO_REUSEPORT, so that Istio's own validation (which binds
// 127.0.0.1 on the same ports as the same user) can still run beside it; SO_REUSEPORT shares a
// port only between sockets of one owner, so in TPROXY mode, where istio-proxy runs as root, it
// cannot. Connections to them are accepted and closed. $PROXY_STANDIN_LISTENERS, when set, lists
// the ports to listen on instead of 15001,15006 (empty: none, a ready proxy without listeners).
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "proxy-standin:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	ports := []string{"15001", "15006"}
	if v, ok := os.LookupEnv("PROXY_STANDIN_LISTENERS"); ok {
		ports = strings.FieldsFunc(v, func(r rune) bool { return r == ',' })
	}
	for _, port := range ports {
		ln, err := (&net.ListenConfig{Control: reusePort}).Listen(ctx, "tcp", ":"+port)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", port, err)
		}
		go acceptAndClose(ln)
	}
	status, err := net.Listen("tcp4", "127.0.0.1:15020")
	if err != nil {
		return fmt.Errorf("listening on the status port: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, r *http.Request) {})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(status); err != nil && err != http.ErrServerClosed {
		return fmt.Errorf("serving the status port: %w", err)
	}
	return nil
}

func acceptAndClose(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

func reusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
