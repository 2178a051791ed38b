package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// istio-cni's native nftables writer matches kubelet's probes by the socket's UID (meta skuid),
// and finds that UID the way the agent does in its DaemonSet: the process named kubelet (or
// kubelite) in the node's /proc, mounted at /host/proc. A test bed has neither a kubelet nor a
// /host mount, so --host --native-nftables runs Istio's code with both made real for it alone:
// a stand-in process named kubelet, running as --kubelet-uid, and a private mount namespace whose
// root is the machine's own tree plus /host/proc (the machine's /proc). Nothing outside that mount
// namespace changes but the temporary directories, which are removed afterwards. Istio's lookup
// takes the first kubelet in /proc, which may be another run's stand-in: runs at the same time
// must use one --kubelet-uid.
const (
	envHostRoot       = "AMBIENT_INPOD_HOST_ROOT"       // set in the re-executed writer: the new root to enter
	envKubeletStandIn = "AMBIENT_INPOD_KUBELET_STANDIN" // set in the stand-in: wait for stdin to close
)

// runKubeletStandIn is the stand-in's whole life: it ends when its parent closes its stdin (or dies).
func runKubeletStandIn() {
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// runWithHostRoot runs this program again with the same arguments in a private mount namespace
// that has /host/proc, while a stand-in kubelet runs as kubeletUID, and returns its error.
func runWithHostRoot(kubeletUID int) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program: %w", err)
	}
	dir, err := os.MkdirTemp("", "ambient-inpod-host-")
	if err != nil {
		return fmt.Errorf("making a directory for the host root: %w", err)
	}
	defer os.RemoveAll(dir)

	// The kernel names a process after the file it was executed from: a link named kubelet
	// gives Istio's lookup what it searches for (comm "kubelet", "kubelet" in its command line).
	link := filepath.Join(dir, "kubelet")
	if err := os.Symlink(exe, link); err != nil {
		return fmt.Errorf("linking the kubelet stand-in: %w", err)
	}
	standIn := exec.Command(link)
	standIn.Env = append(os.Environ(), envKubeletStandIn+"=1")
	standIn.Stderr = os.Stderr
	standIn.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(kubeletUID), Gid: uint32(kubeletUID)},
		Pdeathsig:  syscall.SIGKILL,
	}
	stdin, err := standIn.StdinPipe()
	if err != nil {
		return fmt.Errorf("kubelet stand-in: %w", err)
	}
	if err := standIn.Start(); err != nil {
		return fmt.Errorf("starting the kubelet stand-in: %w", err)
	}
	defer func() {
		_ = stdin.Close()
		_ = standIn.Wait()
	}()
	// Wait until the kernel names it kubelet: until the exec is done, /proc shows this program's name.
	if err := waitComm(standIn.Process.Pid, "kubelet"); err != nil {
		return err
	}

	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("making the host root: %w", err)
	}
	writer := exec.Command(exe, os.Args[1:]...)
	writer.Env = append(os.Environ(), envHostRoot+"="+root)
	writer.Stdout, writer.Stderr = os.Stdout, os.Stderr
	// Go makes the new mount namespace's mounts private before exec, so nothing propagates out.
	writer.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := writer.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("istio-cni's host writer in its mount namespace: exit status %d", exit.ExitCode())
		}
		return fmt.Errorf("running istio-cni's host writer in its own mount namespace: %w", err)
	}
	return nil
}

func waitComm(pid int, want string) error {
	for range 500 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err != nil {
			return fmt.Errorf("reading the kubelet stand-in's name: %w", err)
		}
		if string(b) == want+"\n" {
			return nil
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 10_000_000}, nil)
	}
	return fmt.Errorf("the kubelet stand-in (pid %d) never became %q", pid, want)
}

// enterHostRoot, in the re-executed writer's private mount namespace, makes root a copy of the
// machine's tree (every top-level directory bound, every top-level link copied) with /host/proc
// bound to /proc, and changes the root to it.
func enterHostRoot(root string) error {
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mounting a tmpfs at %s: %w", root, err)
	}
	entries, err := os.ReadDir("/")
	if err != nil {
		return fmt.Errorf("listing /: %w", err)
	}
	for _, e := range entries {
		src, dst := "/"+e.Name(), filepath.Join(root, e.Name())
		switch {
		case e.Type()&os.ModeSymlink != 0:
			to, err := os.Readlink(src)
			if err != nil {
				return fmt.Errorf("reading link %s: %w", src, err)
			}
			if err := os.Symlink(to, dst); err != nil {
				return fmt.Errorf("copying link %s: %w", src, err)
			}
		case e.IsDir():
			if err := os.Mkdir(dst, 0o755); err != nil {
				return fmt.Errorf("making %s: %w", dst, err)
			}
			if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("binding %s: %w", src, err)
			}
		}
	}
	hostProc := filepath.Join(root, "host", "proc")
	if err := os.MkdirAll(hostProc, 0o755); err != nil {
		return fmt.Errorf("making %s: %w", hostProc, err)
	}
	if err := unix.Mount("/proc", hostProc, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding /proc at /host/proc: %w", err)
	}
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("changing root to %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("entering the new root: %w", err)
	}
	return nil
}
