package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Containerd2Version is the containerd 2.x release test/setup.sh builds from the Go module proxy
// (Debian ships 1.6 only). Keep it in sync with CONTAINERD2_VERSION in test/setup.sh.
const Containerd2Version = "v2.2.9"

// Containerd17Version is the containerd 1.7 release test/setup.sh builds. Keep it in sync with
// CONTAINERD17_VERSION in test/setup.sh.
const Containerd17Version = "v1.7.30"

// containerdReadyTimeout bounds the wait for a fresh daemon's socket.
const containerdReadyTimeout = 30 * time.Second

// SandboxImage is the pod sandbox ("pause") image every test bed containerd is configured with.
const SandboxImage = "meshdoctor.test/pause:1"

// IstioImage is the image of the test bed's Istio containers: Istio's pilot-agent (what istio-init
// and istio-validation run), the iptables binaries it drives, and busybox for everything else.
const IstioImage = "meshdoctor.test/istio:1"

// Containerd is a containerd daemon with its CRI plugin, started by the test bed with a root,
// state, socket and runc root of its own under a temporary directory, inside a network namespace
// of its own so the bridge CNI it drives never touches the host's network. Pod sandboxes it runs
// are real: /var/run/netns/cni-* files, veth pairs, cgroups, shims.
type Containerd struct {
	// Address is the daemon's gRPC socket (containerd's API and CRI alike).
	Address string
	// Version is what `containerd --version` says, e.g. "1.6.20~ds1" or "v2.2.9".
	Version string
	// Major is the major version: 1 or 2 (their configuration formats differ).
	Major int
	// Dir holds everything of the daemon: config, root, state, logs, CNI configuration.
	Dir string
	// Netns is the network namespace the daemon (and the pods' bridge) lives in.
	Netns *Netns
	// PodLogDir is where pod logs go (kubelet's /var/log/pods for this node).
	PodLogDir string

	binary     string
	cmd        *exec.Cmd
	exited     chan struct{}
	stopOnce   sync.Once
	stopErr    error
	beforeStop []func(context.Context) error
	// adopted is the pid of a daemon this process did not start (SweepAbandoned): stopped by pid.
	adopted int
	// hostDirs are the host directories the runtime creates on demand that did not exist
	// before this daemon started: removed at Stop when empty.
	hostDirs []string
	// dualStack gives the pods IPv6 addresses too.
	dualStack bool
}

// runtimeHostDirs are created on the host by containerd's shims (/run/containerd/s holds their
// sockets whatever the daemon's state dir) and by libcni (its result cache), deepest first.
var runtimeHostDirs = []string{"/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"}

// ContainerdOption changes how a daemon is started.
type ContainerdOption func(*containerdConfig)

type containerdConfig struct {
	binary    string
	dualStack bool
}

// PodIPv6Subnet is where a dual-stack node's pods get their IPv6 address (WithDualStackPods).
const PodIPv6Subnet = "fd00:10:88::/64"

// WithDualStackPods gives every pod an IPv6 address (from PodIPv6Subnet) besides its IPv4 one,
// as a dual-stack cluster's CNI does.
func WithDualStackPods() ContainerdOption {
	return func(c *containerdConfig) { c.dualStack = true }
}

// WithContainerdBinary runs another containerd binary than Debian's /usr/bin/containerd (e.g.
// Containerd2Binary's).
func WithContainerdBinary(path string) ContainerdOption {
	return func(c *containerdConfig) { c.binary = path }
}

// Containerd2Binary returns the containerd 2.x binary test/setup.sh built into the cache, skipping
// the test (failing it in CI) when it is missing.
func Containerd2Binary(tb testing.TB) string {
	tb.Helper()
	return cachedBinary(tb, "containerd-"+Containerd2Version)
}

// Containerd17Binary returns the containerd 1.7 binary test/setup.sh built into the cache.
func Containerd17Binary(tb testing.TB) string {
	tb.Helper()
	return cachedBinary(tb, "containerd-"+Containerd17Version)
}

func cachedBinary(tb testing.TB, name string) string {
	tb.Helper()
	path := filepath.Join(CacheDir(), "bin", name)
	if info, err := os.Stat(path); err != nil || info.Mode()&0o111 == 0 {
		skipOrFatal(tb, "testbed: %s not found in %s: run test/setup.sh", name, filepath.Dir(path))
	}
	return path
}

// StartContainerd starts a daemon for the test and stops it (and everything it ran) when the test
// ends. It skips the test when not privileged (fails in CI).
func StartContainerd(tb testing.TB, opts ...ContainerdOption) *Containerd {
	tb.Helper()
	RequirePrivileged(tb)
	for _, tool := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc", "nsenter"} {
		if _, err := findTool(tool); err != nil {
			skipOrFatal(tb, "testbed: %v; run test/setup.sh", err)
		}
	}
	// Daemons a killed earlier run left behind are restarted and emptied first, on their own
	// clock: on a node they left with many pods that takes minutes, and must not be charged to
	// this daemon's start deadline (a CI run once failed on exactly that).
	if swept, took := SweepAbandoned(); swept > 0 {
		tb.Logf("testbed: cleaned %d containerd test daemon(s) an earlier run left behind in %s", swept, took.Round(time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := LaunchContainerd(ctx, opts...)
	if err != nil {
		tb.Fatalf("testbed: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("containerd log (last lines):\n%s", c.LogTail(40))
		}
		if err := c.Stop(); err != nil {
			tb.Errorf("testbed: %v", err)
		}
	})
	return c
}

// LaunchContainerd starts a daemon for callers that are not tests (benchmark programs). The caller
// must Stop it. On error nothing is left behind.
func LaunchContainerd(ctx context.Context, opts ...ContainerdOption) (_ *Containerd, err error) {
	cfg := containerdConfig{binary: "containerd"}
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := findTool(cfg.binary)
	if err != nil {
		return nil, err
	}
	SweepAbandoned()
	c := &Containerd{binary: bin, exited: make(chan struct{}), dualStack: cfg.dualStack}
	for _, d := range runtimeHostDirs {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			c.hostDirs = append(c.hostDirs, d)
		}
	}
	if c.Version, c.Major, err = containerdVersion(ctx, bin); err != nil {
		return nil, err
	}
	if c.Dir, err = os.MkdirTemp("", "md-containerd-"); err != nil {
		return nil, fmt.Errorf("creating containerd dir: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	c.Address = filepath.Join(c.Dir, "containerd.sock")
	c.PodLogDir = filepath.Join(c.Dir, "pods")
	if c.Netns, err = Create(ctx, IPv4Only()); err != nil {
		return nil, fmt.Errorf("creating the daemon's netns: %w", err)
	}
	if err := c.writeConfig(); err != nil {
		return nil, err
	}
	if err := c.writeOwner(); err != nil {
		return nil, err
	}
	if err := c.start(); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

var containerdVersionRE = regexp.MustCompile(`containerd\S* (v?(\d+)\.\d+\.\d+\S*)`)

func containerdVersion(ctx context.Context, bin string) (string, int, error) {
	res, err := command{args: []string{bin, "--version"}}.run(ctx)
	if err != nil {
		return "", 0, err
	}
	m := containerdVersionRE.FindStringSubmatch(string(res.stdout))
	if m == nil {
		return "", 0, fmt.Errorf("%s --version: unrecognised %q", bin, res.stdout)
	}
	major, _ := strconv.Atoi(m[2])
	return m[1], major, nil
}

// writeConfig writes config.toml (format version 2 for containerd 1.x, 3 for 2.x) and the bridge
// CNI configuration.
func (c *Containerd) writeConfig() error {
	for _, d := range []string{"root", "state", "runc", "opt", "net.d", "cni-ipam", "pods"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return fmt.Errorf("creating containerd dirs: %w", err)
		}
	}
	d := func(name string) string { return strconv.Quote(filepath.Join(c.Dir, name)) }
	common := fmt.Sprintf(`root = %s
state = %s

[grpc]
  address = %s

[ttrpc]
  address = %s

[plugins."io.containerd.internal.v1.opt"]
  path = %s
`, d("root"), d("state"), strconv.Quote(c.Address), strconv.Quote(c.Address+".ttrpc"), d("opt"))

	var cfg string
	if c.Major >= 2 {
		// Since 2.0 the CRI plugin is split into images, runtime and the gRPC server. NRI and CDI
		// are off: they would create sockets and directories on the host.
		cfg = "version = 3\n" + common + fmt.Sprintf(`
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = %s

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %s
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        Root = %s

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, d("verifier"), SandboxImage, d("net.d"), d("runc"))
	} else {
		// restrict_oom_score_adj: the sandbox spec asks for oom_score_adj -998, which a process
		// without CAP_SYS_RESOURCE cannot set and runc then fails obscurely.
		cfg = "version = 2\n" + common + fmt.Sprintf(`
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %s
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %s
`, SandboxImage, d("net.d"), d("runc"))
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("writing containerd config: %w", err)
	}
	// The bridge lives in the daemon's own netns; host-local keeps its leases in our dir.
	ipv6Range, ipv6Route := "", ""
	if c.dualStack {
		ipv6Range, ipv6Route = `, [{"subnet": "`+PodIPv6Subnet+`"}]`, `, {"dst": "::/0"}`
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "mdpods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "mdbr0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": %s,
        "ranges": [[{"subnet": "10.88.0.0/16"}]%s],
        "routes": [{"dst": "0.0.0.0/0"}%s]
      }
    }
  ]
}
`, d("cni-ipam"), ipv6Range, ipv6Route)
	if err := os.WriteFile(filepath.Join(c.Dir, "net.d", "10-mdpods.conflist"), []byte(conflist), 0o600); err != nil {
		return fmt.Errorf("writing CNI config: %w", err)
	}
	return nil
}

// Restart kills the daemon as a crash would (SIGKILL: its shims and their pods keep running, as on
// a node) and starts it again on the same root and state, returning once it serves CRI again.
func (c *Containerd) Restart(ctx context.Context) error {
	if c.cmd == nil {
		return errors.New("testbed: this containerd was not started by this process")
	}
	if !c.exitedNow() {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-c.exited:
		case <-ctx.Done():
			return fmt.Errorf("testbed: containerd did not exit after SIGKILL: %w", ctx.Err())
		}
	}
	c.exited = make(chan struct{})
	if err := c.start(); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

func (c *Containerd) start() error {
	// Appended: a restarted daemon's log follows the one before it.
	logFile, err := os.OpenFile(filepath.Join(c.Dir, "containerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("creating containerd log: %w", err)
	}
	// nsenter --net switches only the network namespace: the daemon shares the host's mount
	// namespace, so the netns files it bind-mounts for pods are visible to meshdoctor. (`ip netns
	// exec` would give it a private mount namespace and hide them.)
	cmd := exec.Command("nsenter", "--net="+c.Netns.Path(), "--", c.binary, "--config", filepath.Join(c.Dir, "config.toml"))
	cmd.Env = []string{"PATH=" + toolPath, "TMPDIR=" + c.Dir}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so a Ctrl-C of `go test` reaches us first and we stop it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", c.binary, err)
	}
	c.cmd = cmd
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(c.exited)
	}()
	return nil
}

func (c *Containerd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, containerdReadyTimeout)
	defer cancel()
	for {
		if conn, err := net.Dial("unix", c.Address); err == nil {
			conn.Close()
			// containerd answers its own API before its CRI plugin has initialised (CRI calls
			// fail with "server is not initialized yet" meanwhile): ready is when both answer.
			if _, err := c.Ctr(ctx, "version"); err == nil && c.criReady(ctx) == nil {
				return nil
			}
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd %s exited at start:\n%s", c.Version, c.LogTail(30))
		case <-ctx.Done():
			return fmt.Errorf("containerd %s not ready after %s:\n%s", c.Version, containerdReadyTimeout, c.LogTail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// criReady asks the CRI plugin for its status.
func (c *Containerd) criReady(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = runtimeapi.NewRuntimeServiceClient(conn).Status(ctx, &runtimeapi.StatusRequest{})
	return err
}

// Ctr runs Debian's ctr against the daemon in its k8s.io namespace (where CRI keeps everything)
// and returns its stdout.
func (c *Containerd) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	res, err := command{args: append([]string{"ctr", "--address", c.Address, "--namespace", "k8s.io"}, args...)}.run(ctx)
	return res.stdout, err
}

// ImportImage imports an image archive into the k8s.io namespace and unpacks it for CRI: a
// `docker save` tar (Image.WriteArchive) or an OCI layout tar (deploy/image.WriteArchive), which
// ctr imports with its manifest unchanged.
func (c *Containerd) ImportImage(ctx context.Context, archive string) error {
	if _, err := c.Ctr(ctx, "images", "import", archive); err != nil {
		return fmt.Errorf("importing %s: %w", archive, err)
	}
	return nil
}

// BeforeStop registers fn to run first when the daemon is stopped, while it still serves: how a
// CRI client removes its pods cleanly (CNI DEL, netns removal) before the daemon goes.
func (c *Containerd) BeforeStop(fn func(context.Context) error) {
	c.beforeStop = append(c.beforeStop, fn)
}

// LogTail returns the last n lines of the daemon's log.
func (c *Containerd) LogTail(n int) string {
	data, err := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Kill stops the daemon abruptly (SIGKILL), as a crashed or restarting runtime: its socket stops
// answering while its pods keep running. Stop still cleans everything up.
func (c *Containerd) Kill() error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing containerd: %w", err)
	}
	<-c.exited
	return nil
}

// Stop removes everything the daemon ran and then the daemon itself: pods through BeforeStop
// hooks, leftover tasks and containers through ctr, the daemon, then whatever a crash could have
// left on the host (netns files, CNI cache files, cgroups, shim sockets) and its directory. It is
// idempotent.
func (c *Containerd) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

// stopTimeout bounds each phase of Stop: removing a node of 110 pods through CRI takes a while.
const stopTimeout = 5 * time.Minute

// leftover is what one container of the daemon may leave on the host.
type leftover struct {
	id     string
	netns  string
	cgroup string
}

func (c *Containerd) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	var errs []error
	running := (c.cmd != nil && !c.exitedNow()) || c.adopted > 0
	if _, err := os.Stat(filepath.Join(c.Dir, "config.toml")); !running && c.Dir != "" && err == nil {
		// Killed, crashed, or left by a test process that died: its pods may still run. Start
		// it again on the same root and state so that it recovers them and they can be removed
		// the proper way (CNI DEL, netns, cgroups).
		c.exited = make(chan struct{})
		if err := c.start(); err == nil {
			if err := c.waitReady(ctx); err == nil {
				running = true
			}
		}
	}
	if running {
		for i := len(c.beforeStop) - 1; i >= 0; i-- {
			if err := c.beforeStop[i](ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	var left []leftover
	if running {
		// A fresh deadline: the hooks may have used up theirs on a node with many pods.
		rctx, rcancel := context.WithTimeout(context.Background(), stopTimeout)
		left = c.removeContainers(rctx)
		rcancel()
	}
	if c.cmd != nil {
		if !c.exitedNow() {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(15 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.exited
			}
		}
	}
	if c.adopted > 0 {
		terminate(c.adopted)
	}
	errs = append(errs, c.killShims())
	for _, l := range left {
		errs = append(errs, removeLeftover(c.Address, l))
	}
	if c.Netns != nil {
		errs = append(errs, c.Netns.Delete())
	}
	// Another test bed daemon may still need them (test packages run in parallel): the last
	// one out removes them.
	if !otherTestDaemons(c.cmd) {
		for _, d := range c.hostDirs {
			_ = os.Remove(d) // rmdir: only when empty
		}
	}
	if c.Dir != "" {
		// Mounts (overlay rootfs, shm) may linger under root/state if a shim was killed.
		errs = append(errs, unmountUnder(c.Dir))
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", c.Dir, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Containerd) exitedNow() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// removeContainers kills and deletes every task and container left in the daemon, and returns
// what they may leave on the host.
func (c *Containerd) removeContainers(ctx context.Context) []leftover {
	out, err := c.Ctr(ctx, "containers", "list", "--quiet")
	if err != nil {
		return nil
	}
	var left []leftover
	for _, id := range strings.Fields(string(out)) {
		l := leftover{id: id}
		if spec, err := c.Ctr(ctx, "containers", "info", "--spec", id); err == nil {
			var s struct {
				Linux struct {
					CgroupsPath string `json:"cgroupsPath"`
					Namespaces  []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			}
			if json.Unmarshal(spec, &s) == nil {
				l.cgroup = s.Linux.CgroupsPath
				for _, ns := range s.Linux.Namespaces {
					if ns.Type == "network" && strings.HasPrefix(ns.Path, netnsRunDir+"/cni-") {
						l.netns = ns.Path
					}
				}
			}
		}
		left = append(left, l)
		_, _ = c.Ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
	}
	for _, l := range left {
		for i := 0; i < 20; i++ {
			if _, err := c.Ctr(ctx, "tasks", "delete", "--force", l.id); err == nil ||
				!strings.Contains(err.Error(), "running") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, _ = c.Ctr(ctx, "containers", "delete", l.id)
	}
	return left
}

// ownerFile records, in a daemon's directory, who started it and how: enough for a later test
// process to clean up after one that died without running its cleanup (go test's timeout kills
// it), whose pods would otherwise run forever.
const ownerFile = "owner.json"

type owner struct {
	Pid       int    `json:"pid"`
	StartTime string `json:"startTime"` // /proc/PID/stat field 22: tells a reused pid apart
	Binary    string `json:"binary"`
	Major     int    `json:"major"`
	Netns     string `json:"netns"`
}

func (c *Containerd) writeOwner() error {
	o := owner{Pid: os.Getpid(), StartTime: procStartTime(os.Getpid()), Binary: c.binary, Major: c.Major}
	if c.Netns != nil {
		o.Netns = c.Netns.Name
	}
	data, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, ownerFile), data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", ownerFile, err)
	}
	return nil
}

func procStartTime(pid int) string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
	rest := string(data[bytes.LastIndexByte(data, ')')+1:])
	f := strings.Fields(rest)
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// SweepAbandoned stops and cleans up the test bed daemons whose test process is gone, with all
// their pods, and says how many it cleaned and how long that took. LaunchContainerd calls it, so
// a run killed by a timeout is cleaned by the next; StartContainerd calls it before its start
// deadline begins.
func SweepAbandoned() (swept int, took time.Duration) {
	start := time.Now()
	defer func() { took = time.Since(start) }()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "md-containerd-*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being created, or not a test bed daemon of this version
		}
		var o owner
		if json.Unmarshal(data, &o) != nil || o.Pid <= 0 {
			continue
		}
		if st := procStartTime(o.Pid); st != "" && st == o.StartTime {
			continue // its test process still runs
		}
		// Test packages run in parallel: one sweeper per directory.
		lock, err := os.OpenFile(filepath.Join(dir, "sweep.lock"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			continue
		}
		lock.Close()
		c := &Containerd{Dir: dir, Address: filepath.Join(dir, "containerd.sock"), PodLogDir: filepath.Join(dir, "pods"),
			binary: o.Binary, Major: o.Major, exited: make(chan struct{}), adopted: daemonPid(dir)}
		if o.Netns != "" {
			c.Netns = &Netns{Name: o.Netns, ownsNetns: true, ownsEtc: true}
		}
		_ = c.Stop()
		swept++
	}
	return swept, 0
}

// daemonPid finds the running daemon whose config is under dir, or 0.
func daemonPid(dir string) int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	want := []byte(filepath.Join(dir, "config.toml"))
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline")); err == nil && bytes.Contains(cmdline, want) {
			return pid
		}
	}
	return 0
}

// terminate stops a process that is not our child: SIGTERM, then SIGKILL after 15 s.
func terminate(pid int) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 150; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// otherTestDaemons reports whether another test bed containerd runs (one whose config is under
// a md-containerd- directory), self excepted.
func otherTestDaemons(self *exec.Cmd) bool {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || (self != nil && self.Process != nil && pid == self.Process.Pid) {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, []byte("/md-containerd-")) && bytes.Contains(cmdline, []byte("config.toml")) &&
			!bytes.Contains(cmdline, []byte("nsenter")) {
			return true
		}
	}
	return false
}

// killShims kills shim processes still serving this daemon's address (a killed daemon leaves them).
func (c *Containerd) killShims() error {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("listing processes: %w", err)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if !strings.Contains(args[0], "containerd-shim") {
			continue
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-address" && args[i+1] == c.Address {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return nil
}

// removeLeftover removes what one container could leave on the host when its daemon was killed:
// its netns file, libcni's cache entries naming it, its cgroup, its shim's socket.
func removeLeftover(address string, l leftover) error {
	var errs []error
	if l.netns != "" {
		if _, err := os.Stat(l.netns); err == nil {
			_ = syscall.Unmount(l.netns, syscall.MNT_DETACH)
			if err := os.Remove(l.netns); err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Errorf("removing %s: %w", l.netns, err))
			}
		}
	}
	for _, dir := range []string{"/var/lib/cni/results", "/var/lib/cni/cache/results"} {
		matches, _ := filepath.Glob(filepath.Join(dir, "*"+l.id+"*"))
		for _, m := range matches {
			_ = os.Remove(m)
		}
	}
	if l.cgroup != "" && strings.HasPrefix(l.cgroup, "/") {
		killCgroup(l.cgroup)
		errs = append(errs, removeCgroup(l.cgroup))
		// The pod's and the test node's parent cgroups go too once empty.
		for p := filepath.Dir(l.cgroup); p != "/" && p != "."; p = filepath.Dir(p) {
			_ = removeCgroup(p)
		}
	}
	// The shim socket is /run/containerd/s/sha256(ADDRESS/NAMESPACE/ID).
	sum := sha256.Sum256([]byte(filepath.Join(address, "k8s.io", l.id)))
	_ = os.Remove(fmt.Sprintf("/run/containerd/s/%x", sum))
	return errors.Join(errs...)
}

// killCgroup kills the processes still in a container's cgroup: a container whose shim was
// killed keeps running, re-parented to init. They are the test bed's own pods' processes.
func killCgroup(path string) {
	for _, h := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"} {
		data, err := os.ReadFile(filepath.Join(h, path, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		// Give the kernel a moment to empty the cgroup before it is removed.
		for i := 0; i < 50; i++ {
			if data, err := os.ReadFile(filepath.Join(h, path, "cgroup.procs")); err != nil || len(bytes.TrimSpace(data)) == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		return
	}
}

// removeCgroup removes a cgroupfs path in every hierarchy (cgroup v1 has one per controller).
func removeCgroup(path string) error {
	roots := []string{"/sys/fs/cgroup"}
	if entries, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range entries {
			if e.IsDir() {
				roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
			}
		}
	}
	for _, root := range roots {
		_ = os.Remove(filepath.Join(root, path)) // rmdir: only an empty cgroup goes
	}
	return nil
}

// RemoveCgroupTree removes a cgroupfs path and its children, deepest first, in every hierarchy:
// for the parent cgroup a test bed kubelet puts its pods under.
func RemoveCgroupTree(path string) error {
	if !strings.HasPrefix(path, "/") || path == "/" {
		return fmt.Errorf("refusing to remove cgroup %q", path)
	}
	roots := []string{"/sys/fs/cgroup"}
	if entries, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range entries {
			if e.IsDir() {
				roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
			}
		}
	}
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, path)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount below dir (from /proc/self/mountinfo), deepest first.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("reading mountinfo: %w", err)
	}
	var mounts []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	return nil
}

// ContainerdFlavor is one containerd release the test bed runs.
type ContainerdFlavor struct {
	Name string
	// Options start that release; they skip the test (fail it in CI) when its binary is missing.
	Options func(testing.TB) []ContainerdOption
}

// ContainerdFlavors returns the releases meshdoctor supports, Debian's 1.6 and the 1.7 and 2.x
// that test/setup.sh builds, or only the named ones ("containerd-1.6-debian", "containerd-1.7",
// "containerd-2").
func ContainerdFlavors(names ...string) []ContainerdFlavor {
	all := []ContainerdFlavor{
		{"containerd-1.6-debian", func(testing.TB) []ContainerdOption { return nil }},
		{"containerd-1.7", func(tb testing.TB) []ContainerdOption {
			return []ContainerdOption{WithContainerdBinary(Containerd17Binary(tb))}
		}},
		{"containerd-2", func(tb testing.TB) []ContainerdOption {
			return []ContainerdOption{WithContainerdBinary(Containerd2Binary(tb))}
		}},
	}
	if len(names) == 0 {
		return all
	}
	var out []ContainerdFlavor
	for _, f := range all {
		for _, n := range names {
			if f.Name == n {
				out = append(out, f)
			}
		}
	}
	return out
}
