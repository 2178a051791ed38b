package cgroupbpf

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// Mountinfo lines as the kernel writes them: a hybrid node (v1 controllers, the unified
// hierarchy at /sys/fs/cgroup/unified), a pure v2 node, and an agent in its own cgroup namespace
// with the node's hierarchy mounted under its host root (the root field starts with "/..").
func TestCgroup2Mounts(t *testing.T) {
	mi := `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 22 0:37 /../../.. /host/sys/fs/cgroup ro,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
42 22 0:37 / /with\040space rw - cgroup2 cgroup2 rw
`
	got := Cgroup2Mounts([]byte(mi))
	want := []Mount{{"/", "/sys/fs/cgroup/unified"}, {"/../../..", "/host/sys/fs/cgroup"}, {"/", "/with space"}}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestUnifiedPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      error
	}{
		{in: "12:pids:/kubepods/pod1/abc\n0::/kubepods/pod1/abc\n", want: "/kubepods/pod1/abc"},
		{in: "0::/\n", want: "/"},
		{in: "0::/../../kubepods.slice/cri-containerd-1.scope\n", want: "/../../kubepods.slice/cri-containerd-1.scope"},
		{in: "4:memory:/x\n1:cpu:/x\n", err: ErrNoCgroup2},
	} {
		got, err := UnifiedPath([]byte(tc.in))
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("UnifiedPath(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// Resolve joins the path with the mount that shows it, never cleaning "..": a path outside the
// agent's cgroup namespace is found only through a mount whose root is outside it too.
func TestResolve(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"own/kubepods/pod1/abc", "host/kubepods/pod1/abc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	own := Mount{Root: "/", Point: filepath.Join(root, "own")}
	host := Mount{Root: "/../..", Point: filepath.Join(root, "host")}
	for _, tc := range []struct {
		name   string
		mounts []Mount
		path   string
		want   string
		err    error
	}{
		{"same namespace", []Mount{own}, "/kubepods/pod1/abc", filepath.Join(root, "own/kubepods/pod1/abc"), nil},
		{"outside the agent's namespace", []Mount{own, host}, "/../../kubepods/pod1/abc", filepath.Join(root, "host/kubepods/pod1/abc"), nil},
		{"outside and no mount shows it", []Mount{own}, "/../../kubepods/pod1/abc", "", ErrNoCgroup2},
		{"no cgroup2 mount", nil, "/kubepods", "", ErrNoCgroup2},
		{"missing directory", []Mount{own}, "/kubepods/pod2", "", ErrNoCgroup2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.mounts, tc.path)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Errorf("Resolve(%q) = %q, %v; want %q, %v", tc.path, got, err, tc.want, tc.err)
			}
		})
	}
}

// A program unloaded between the query and its lookup is ENOENT, which Effective skips.
func TestProgramInfoVanished(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN")
	}
	// Ids are allocated upwards from 1 and never reach the top of the range.
	if _, err := programInfo(1<<31 - 1); !errors.Is(err, unix.ENOENT) {
		t.Errorf("programInfo of an id no program has: err = %v, want ENOENT", err)
	}
}
