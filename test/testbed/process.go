package testbed

import (
	"bytes"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a program a test runs in the background, such as the meshdoctor agent under test:
// its output is kept (and shown when the test fails), and it is killed when the test ends.
type Process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan error
}

// StartProcess starts name with args.
func StartProcess(tb testing.TB, name string, args ...string) *Process {
	tb.Helper()
	p := &Process{done: make(chan error, 1)}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("testbed: starting %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	tb.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		if tb.Failed() {
			tb.Logf("output of %s:\n%s", name, p.Output())
		}
	})
	return p
}

// Write collects the process's output.
func (p *Process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Output is what the process wrote so far, stdout and stderr together.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Stop sends SIGTERM, as kubelet does, and fails the test unless the process exits 0 within the
// 30 s of a pod's default grace period. It returns how long the exit took.
func (p *Process) Stop(tb testing.TB) time.Duration {
	tb.Helper()
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			tb.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		tb.Errorf("still running 30 s after SIGTERM")
	}
	return time.Since(start)
}
