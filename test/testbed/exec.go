package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// toolPath is the PATH every command of the test bed runs with. It is fixed, not inherited, so
// that pilot-agent finds the same iptables binaries whatever the caller's PATH (go test under
// sudo or CI often lacks the sbin directories) and no stray environment variable reaches
// pilot-agent, which reads many settings from the environment.
const toolPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// waitDelay bounds how long a command may linger after its context is done.
const waitDelay = 5 * time.Second

// findTool resolves a binary name on toolPath.
func findTool(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(toolPath) {
		path := filepath.Join(dir, name)
		if info, err := os.Stat(path); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	return "", fmt.Errorf("%s not found in %s", name, toolPath)
}

// ExecError is a command that failed. It unwraps to the underlying error (an *exec.ExitError
// when the command ran and exited non-zero) and carries the command's combined output, which is
// where iptables and pilot-agent explain themselves.
type ExecError struct {
	Args   []string // the command line, as run
	Output []byte   // stdout and stderr, interleaved
	Err    error
}

func (e *ExecError) Error() string {
	out := strings.TrimSpace(string(e.Output))
	if out == "" {
		return fmt.Sprintf("%s: %v", shellJoin(e.Args), e.Err)
	}
	return fmt.Sprintf("%s: %v\n%s", shellJoin(e.Args), e.Err, out)
}

func (e *ExecError) Unwrap() error { return e.Err }

// ExitCode returns the command's exit status, or -1 when it did not run to an exit.
func (e *ExecError) ExitCode() int {
	var exitErr *exec.ExitError
	if errors.As(e.Err, &exitErr) {
		return exitErr.ExitCode()
	}
	return -1
}

// result is what a finished command produced.
type result struct {
	stdout   []byte
	combined []byte
}

// command is one program to run with a controlled environment.
type command struct {
	args []string // args[0] is resolved on toolPath
	env  []string // added to PATH
}

// run runs the command and returns its output; a non-nil error is an *ExecError.
func (c command) run(ctx context.Context) (result, error) {
	bin, err := findTool(c.args[0])
	if err != nil {
		return result{}, &ExecError{Args: c.args, Err: err}
	}
	cmd := exec.CommandContext(ctx, bin, c.args[1:]...)
	cmd.Env = append([]string{"PATH=" + toolPath}, c.env...)
	cmd.WaitDelay = waitDelay
	var stdout bytes.Buffer
	combined := &lockedBuffer{}
	cmd.Stdout = io.MultiWriter(&stdout, combined)
	cmd.Stderr = combined
	err = cmd.Run()
	res := result{stdout: stdout.Bytes(), combined: combined.Bytes()}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%w)", err, ctxErr)
		}
		return res, &ExecError{Args: c.args, Output: res.combined, Err: err}
	}
	return res, nil
}

// lockedBuffer lets stdout and stderr, copied by two goroutines, share one buffer.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// shellJoin renders a command line so that it can be pasted into a shell: the empty argument
// of `-x ""` must stay visible.
func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = ShellQuote(a)
	}
	return strings.Join(quoted, " ")
}

// ShellQuote quotes one argument for a POSIX shell when it needs quoting.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, needsQuote) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func needsQuote(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return false
	}
	return !strings.ContainsRune("-_./,:=+@%", r)
}
