// Package cgroupbpf lists the BPF programs that act on a cgroup's sockets at connect and sendmsg
// time: the hooks a socket load balancer (Cilium's socket LB, Calico's connect-time load balancer)
// uses to rewrite a Service's ClusterIP into a backend's address before any netfilter rule of the
// pod, Istio's included, sees the connection.
//
// It only reads: BPF_PROG_QUERY with BPF_F_QUERY_EFFECTIVE on the cgroup (so programs attached to
// its ancestors count, as they do for the kernel), then BPF_PROG_GET_FD_BY_ID and
// BPF_OBJ_GET_INFO_BY_FD for each program's name, type and tag. It never loads, attaches or
// detaches a program. Three raw bpf(2) commands with fixed attribute layouts are all it needs, so
// it calls them through golang.org/x/sys/unix rather than linking a whole BPF library into the
// agent. Every call needs CAP_SYS_ADMIN (CAP_BPF is not enough for BPF_PROG_QUERY on a cgroup).
package cgroupbpf

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// AttachType is a cgroup attach point of BPF_PROG_TYPE_CGROUP_SOCK_ADDR programs (enum
// bpf_attach_type).
type AttachType uint32

// The attach points a socket load balancer uses. Connect and sendmsg rewrite the destination;
// recvmsg and getpeername translate it back so the application sees the address it asked for.
const (
	Inet4Connect     AttachType = unix.BPF_CGROUP_INET4_CONNECT
	Inet6Connect     AttachType = unix.BPF_CGROUP_INET6_CONNECT
	UDP4Sendmsg      AttachType = unix.BPF_CGROUP_UDP4_SENDMSG
	UDP6Sendmsg      AttachType = unix.BPF_CGROUP_UDP6_SENDMSG
	UDP4Recvmsg      AttachType = unix.BPF_CGROUP_UDP4_RECVMSG
	UDP6Recvmsg      AttachType = unix.BPF_CGROUP_UDP6_RECVMSG
	Inet4Getpeername AttachType = unix.BPF_CGROUP_INET4_GETPEERNAME
	Inet6Getpeername AttachType = unix.BPF_CGROUP_INET6_GETPEERNAME
)

// SocketLBAttachTypes are every attach point a socket load balancer uses, rewriting ones first.
func SocketLBAttachTypes() []AttachType {
	return []AttachType{Inet4Connect, Inet6Connect, UDP4Sendmsg, UDP6Sendmsg,
		UDP4Recvmsg, UDP6Recvmsg, Inet4Getpeername, Inet6Getpeername}
}

// String is the attach point's name as bpftool and libbpf's section names spell it.
func (a AttachType) String() string {
	switch a {
	case Inet4Connect:
		return "connect4"
	case Inet6Connect:
		return "connect6"
	case UDP4Sendmsg:
		return "sendmsg4"
	case UDP6Sendmsg:
		return "sendmsg6"
	case UDP4Recvmsg:
		return "recvmsg4"
	case UDP6Recvmsg:
		return "recvmsg6"
	case Inet4Getpeername:
		return "getpeername4"
	case Inet6Getpeername:
		return "getpeername6"
	}
	return fmt.Sprintf("attach_type_%d", uint32(a))
}

// Rewrites reports whether a program at this attach point can change where a socket connects or
// sends: connect and sendmsg.
func (a AttachType) Rewrites() bool {
	switch a {
	case Inet4Connect, Inet6Connect, UDP4Sendmsg, UDP6Sendmsg:
		return true
	}
	return false
}

// Program is one BPF program effective on a cgroup at one attach point.
type Program struct {
	ID   uint32 `json:"id"`
	Name string `json:"name"`
	// Type is the program type ("cgroup_sock_addr").
	Type string `json:"type"`
	// Tag is the kernel's hash of the program's instructions (hex), what bpftool shows.
	Tag        string `json:"tag"`
	AttachType string `json:"attachType"`
	// Rewrites is true at connect and sendmsg, where the program can change the destination.
	Rewrites bool `json:"rewrites"`
	// AttachedAt is the cgroup directory the program is attached to: the cgroup itself or one of
	// its ancestors; empty when it is attached above what this process can see of the hierarchy.
	AttachedAt string `json:"attachedAt,omitempty"`
}

// ErrNotCgroup2 is returned for a directory that is not in a cgroup v2 hierarchy.
var ErrNotCgroup2 = errors.New("not a cgroup v2 directory")

// Effective lists the programs effective on the cgroup v2 directory dir at each attach point of
// types, in the kernel's order (the order they run in). A program that is unloaded between the
// query and the lookup of its id is left out. An attach point the kernel does not know (older
// kernels lack getpeername) is skipped.
func Effective(ctx context.Context, dir string, types []AttachType) ([]Program, error) {
	if err := requireCgroup2(dir); err != nil {
		return nil, err
	}
	fd, err := openDir(dir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	attachedAt := map[progAt]string{}
	var out []Program
	for _, at := range types {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ids, err := queryFD(fd, dir, at, unix.BPF_F_QUERY_EFFECTIVE)
		if errors.Is(err, unix.EINVAL) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(ids) > 0 {
			if err := findAttachments(ctx, dir, at, attachedAt); err != nil {
				return nil, err
			}
		}
		for _, id := range ids {
			p, err := programInfo(id)
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("reading BPF program %d effective at %s of %s: %w", id, at, dir, err)
			}
			p.AttachType, p.Rewrites = at.String(), at.Rewrites()
			p.AttachedAt = attachedAt[progAt{id, at}]
			out = append(out, p)
		}
	}
	return out, nil
}

// Attached lists the ids of the programs attached to dir itself at one attach point (no
// ancestors).
func Attached(dir string, at AttachType) ([]uint32, error) {
	if err := requireCgroup2(dir); err != nil {
		return nil, err
	}
	return queryDir(dir, at, 0)
}

type progAt struct {
	id uint32
	at AttachType
}

// findAttachments walks from dir up to the top of its cgroup2 mount and records, for each program
// attached at at, the nearest directory it is attached to.
func findAttachments(ctx context.Context, dir string, at AttachType, into map[progAt]string) error {
	for d := filepath.Clean(dir); ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		ids, err := queryDir(d, at, 0)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if _, seen := into[progAt{id, at}]; !seen {
				into[progAt{id, at}] = d
			}
		}
		parent := filepath.Dir(d)
		if parent == d || requireCgroup2(parent) != nil {
			return nil
		}
		d = parent
	}
}

func requireCgroup2(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("reading cgroup: %w", &os.PathError{Op: "statfs", Path: dir, Err: err})
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup %s: %w (filesystem magic %#x)", dir, ErrNotCgroup2, st.Type)
	}
	return nil
}

// queryDir runs BPF_PROG_QUERY on the cgroup directory.
func queryDir(dir string, at AttachType, flags uint32) ([]uint32, error) {
	fd, err := openDir(dir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return queryFD(fd, dir, at, flags)
}

func openDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("reading cgroup: %w", &os.PathError{Op: "open", Path: dir, Err: err})
	}
	return fd, nil
}

func queryFD(fd int, dir string, at AttachType, flags uint32) ([]uint32, error) {
	ids, err := query(fd, at, flags)
	if errors.Is(err, unix.EPERM) {
		return nil, fmt.Errorf("querying BPF programs at %s of cgroup %s (needs CAP_SYS_ADMIN): %w", at, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("querying BPF programs at %s of cgroup %s: %w", at, dir, err)
	}
	return ids, nil
}

// queryAttr is the BPF_PROG_QUERY part of union bpf_attr, up to prog_cnt: the layout every kernel
// since 4.15 accepts.
type queryAttr struct {
	targetFD    uint32
	attachType  uint32
	queryFlags  uint32
	attachFlags uint32
	progIDs     uint64
	progCnt     uint32
	_           uint32
}

func query(fd int, at AttachType, flags uint32) ([]uint32, error) {
	ids := make([]uint32, 16)
	for {
		attr := queryAttr{targetFD: uint32(fd), attachType: uint32(at), queryFlags: flags,
			progIDs: uint64(uintptr(unsafe.Pointer(&ids[0]))), progCnt: uint32(len(ids))}
		err := bpf(unix.BPF_PROG_QUERY, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		runtime.KeepAlive(ids)
		if errors.Is(err, unix.ENOSPC) && attr.progCnt > uint32(len(ids)) {
			// More programs than room: the kernel said how many; ask again.
			ids = make([]uint32, attr.progCnt)
			continue
		}
		if err != nil {
			return nil, err
		}
		return ids[:attr.progCnt:attr.progCnt], nil
	}
}

type getFDAttr struct {
	progID    uint32
	nextID    uint32
	openFlags uint32
}

type objInfoAttr struct {
	bpfFD   uint32
	infoLen uint32
	info    uint64
}

// progInfo is struct bpf_prog_info up to its name (kernel 4.15): the kernel copies what fits.
type progInfo struct {
	typ          uint32
	id           uint32
	tag          [8]byte
	jitedLen     uint32
	xlatedLen    uint32
	jitedInsns   uint64
	xlatedInsns  uint64
	loadTime     uint64
	createdByUID uint32
	nrMapIDs     uint32
	mapIDs       uint64
	name         [16]byte
}

// programInfo opens the program by id (the fd is a reference, not an attachment) and reads its
// info. ENOENT means the program is gone.
func programInfo(id uint32) (Program, error) {
	get := getFDAttr{progID: id}
	fd, err := bpfFD(unix.BPF_PROG_GET_FD_BY_ID, unsafe.Pointer(&get), unsafe.Sizeof(get))
	if err != nil {
		return Program{}, err
	}
	defer unix.Close(fd)
	var info progInfo
	attr := objInfoAttr{bpfFD: uint32(fd), infoLen: uint32(unsafe.Sizeof(info)), info: uint64(uintptr(unsafe.Pointer(&info)))}
	err = bpf(unix.BPF_OBJ_GET_INFO_BY_FD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(&info)
	if err != nil {
		return Program{}, err
	}
	return Program{
		ID:   info.id,
		Name: strings.TrimRight(string(info.name[:]), "\x00"),
		Type: ProgramType(info.typ),
		Tag:  hex.EncodeToString(info.tag[:]),
	}, nil
}

// ProgramType names a BPF program type as bpftool does, for the types that attach to cgroups.
func ProgramType(t uint32) string {
	switch t {
	case unix.BPF_PROG_TYPE_CGROUP_SKB:
		return "cgroup_skb"
	case unix.BPF_PROG_TYPE_CGROUP_SOCK:
		return "cgroup_sock"
	case unix.BPF_PROG_TYPE_SOCK_OPS:
		return "sock_ops"
	case unix.BPF_PROG_TYPE_CGROUP_DEVICE:
		return "cgroup_device"
	case unix.BPF_PROG_TYPE_CGROUP_SOCK_ADDR:
		return "cgroup_sock_addr"
	case unix.BPF_PROG_TYPE_CGROUP_SYSCTL:
		return "cgroup_sysctl"
	case unix.BPF_PROG_TYPE_CGROUP_SOCKOPT:
		return "cgroup_sockopt"
	}
	return fmt.Sprintf("type_%d", t)
}

func bpf(cmd int, attr unsafe.Pointer, size uintptr) error {
	_, err := bpfFD(cmd, attr, size)
	return err
}

func bpfFD(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}
