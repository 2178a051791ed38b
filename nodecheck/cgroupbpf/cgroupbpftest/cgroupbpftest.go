// Package cgroupbpftest makes what a socket load balancer leaves on a node, for tests: a
// throwaway cgroup v2 directory and a real BPF_PROG_TYPE_CGROUP_SOCK_ADDR program loaded into the
// kernel and attached to it, as Cilium's socket LB and Calico's connect-time load balancer attach
// theirs. Everything is removed when the test ends.
//
// The program is two instructions (r0 = 1; exit): it lets every connect through unchanged, so a
// test cgroup holding it changes nothing for any process, and a test never attaches anything to a
// cgroup it did not create. Only tests load or attach programs; meshdoctor itself only reads.
package cgroupbpftest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// Mount returns the cgroup2 mount point of this process's mount namespace whose root is the
// top of the hierarchy; it skips the test (fails it with CI=true) when there is none.
func Mount(tb testing.TB) string {
	tb.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, m := range cgroupbpf.Cgroup2Mounts(mi) {
		if m.Root == "/" {
			return m.Point
		}
	}
	testbed.SkipOrFatal(tb, "no cgroup2 mount in /proc/self/mountinfo")
	return ""
}

// NewCgroup makes a new cgroup v2 directory under parent (the cgroup2 mount when parent is
// empty), removed when the test ends.
func NewCgroup(tb testing.TB, parent string) string {
	tb.Helper()
	if parent == "" {
		parent = Mount(tb)
	}
	dir, err := os.MkdirTemp(parent, "meshdoctor-test-")
	if err != nil {
		testbed.SkipOrFatal(tb, "making a test cgroup: %v", err)
	}
	tb.Cleanup(func() {
		// A cgroup directory is removed with rmdir, empty of processes and child cgroups.
		if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
			tb.Errorf("removing test cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// Program is a program attached by AttachSockAddr.
type Program struct {
	ID   uint32
	Name string
	Tag  string
}

// AttachSockAddr loads a cgroup sock_addr program named name (at most 15 bytes) for attach
// point at, attaches it to cgroup dir with BPF_F_ALLOW_MULTI (as Cilium and Calico do, so others
// can attach beside it), and detaches and unloads it when the test ends.
func AttachSockAddr(tb testing.TB, dir string, at cgroupbpf.AttachType, name string) Program {
	tb.Helper()
	if len(name) > 15 {
		tb.Fatalf("BPF program name %q longer than 15 bytes", name)
	}
	prog, err := load(at, name)
	if err != nil {
		testbed.SkipOrFatal(tb, "loading a cgroup sock_addr program: %v", err)
	}
	cg, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(prog)
		tb.Fatal(err)
	}
	attach := attachAttr{targetFD: uint32(cg), bpfFD: uint32(prog), attachType: uint32(at), flags: unix.BPF_F_ALLOW_MULTI}
	if err := bpf(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attach), unsafe.Sizeof(attach)); err != nil {
		unix.Close(cg)
		unix.Close(prog)
		testbed.SkipOrFatal(tb, "attaching a cgroup sock_addr program to %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		detach := attachAttr{targetFD: uint32(cg), bpfFD: uint32(prog), attachType: uint32(at)}
		if err := bpf(unix.BPF_PROG_DETACH, unsafe.Pointer(&detach), unsafe.Sizeof(detach)); err != nil {
			tb.Errorf("detaching test program %s from %s: %v", name, dir, err)
		}
		unix.Close(cg)
		unix.Close(prog)
	})
	id, tag, err := info(prog)
	if err != nil {
		tb.Fatalf("reading the info of test program %s: %v", name, err)
	}
	return Program{ID: id, Name: name, Tag: tag}
}

// The instructions r0 = 1; exit (struct bpf_insn, little-endian).
var allowInsns = [16]byte{
	0xb7, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // BPF_ALU64 | BPF_MOV | BPF_K, r0, imm 1
	0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // BPF_JMP | BPF_EXIT
}

// loadAttr is the BPF_PROG_LOAD part of union bpf_attr up to expected_attach_type.
type loadAttr struct {
	progType           uint32
	insnCnt            uint32
	insns              uint64
	license            uint64
	logLevel           uint32
	logSize            uint32
	logBuf             uint64
	kernVersion        uint32
	progFlags          uint32
	name               [16]byte
	ifindex            uint32
	expectedAttachType uint32
}

type attachAttr struct {
	targetFD   uint32
	bpfFD      uint32
	attachType uint32
	flags      uint32
}

func load(at cgroupbpf.AttachType, name string) (int, error) {
	insns := allowInsns
	license := []byte("GPL\x00")
	logBuf := make([]byte, 4096)
	attr := loadAttr{
		progType: unix.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, insnCnt: uint32(len(insns) / 8),
		insns:    uint64(uintptr(unsafe.Pointer(&insns[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
		logLevel: 1, logSize: uint32(len(logBuf)), logBuf: uint64(uintptr(unsafe.Pointer(&logBuf[0]))),
		expectedAttachType: uint32(at),
	}
	copy(attr.name[:], name)
	r, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&insns)
	runtime.KeepAlive(license)
	runtime.KeepAlive(logBuf)
	if errno != 0 {
		return -1, fmt.Errorf("BPF_PROG_LOAD: %w (verifier: %s)", errno, strings.TrimRight(string(logBuf), "\x00"))
	}
	return int(r), nil
}

// info reads the kernel's id and tag of a loaded program (struct bpf_prog_info's first fields).
func info(prog int) (uint32, string, error) {
	var pi struct {
		typ, id uint32
		tag     [8]byte
	}
	attr := struct {
		fd, infoLen uint32
		info        uint64
	}{uint32(prog), uint32(unsafe.Sizeof(pi)), uint64(uintptr(unsafe.Pointer(&pi)))}
	err := bpf(unix.BPF_OBJ_GET_INFO_BY_FD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(&pi)
	if err != nil {
		return 0, "", err
	}
	return pi.id, hex.EncodeToString(pi.tag[:]), nil
}

func bpf(cmd int, attr unsafe.Pointer, size uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size); errno != 0 {
		return errno
	}
	return nil
}

// Unchanged runs fn and fails tb when the programs attached at the socket LB attach points of the
// cgroups dirs (and the mount's root) differ after it from before: what fn did attached or
// detached something.
func Unchanged(tb testing.TB, dirs []string, fn func()) {
	tb.Helper()
	snapshot := func() map[string][]uint32 {
		out := map[string][]uint32{}
		for _, dir := range append(slices.Clone(dirs), Mount(tb)) {
			for _, at := range cgroupbpf.SocketLBAttachTypes() {
				ids, err := cgroupbpf.Attached(dir, at)
				if err != nil {
					tb.Fatal(err)
				}
				out[dir+" "+at.String()] = ids
			}
		}
		return out
	}
	before := snapshot()
	fn()
	after := snapshot()
	for k, ids := range before {
		if !slices.Equal(ids, after[k]) {
			tb.Errorf("%s: attached %v before, %v after", k, ids, after[k])
		}
	}
}
