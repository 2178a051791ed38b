package cgroupbpf_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf/cgroupbpftest"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// A real connect4 program attached to a parent cgroup is effective on its child, with its name,
// type and tag, and says where it is attached; a cgroup with none lists none; a cgroup that is
// gone and a directory that is not a cgroup are clear errors.
func TestEffectiveRealPrograms(t *testing.T) {
	testbed.RequirePrivileged(t)
	parent := cgroupbpftest.NewCgroup(t, "")
	child := cgroupbpftest.NewCgroup(t, parent)
	bare := cgroupbpftest.NewCgroup(t, "")
	lb := cgroupbpftest.AttachSockAddr(t, parent, cgroupbpf.Inet4Connect, "md_test_lb")
	rev := cgroupbpftest.AttachSockAddr(t, parent, cgroupbpf.UDP4Recvmsg, "md_test_rev")
	gone := filepath.Join(parent, "gone")
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		dir     string
		want    []cgroupbpf.Program
		wantErr error
	}{
		{name: "child sees its parent's programs", dir: child, want: []cgroupbpf.Program{
			{ID: lb.ID, Name: "md_test_lb", Type: "cgroup_sock_addr", Tag: lb.Tag, AttachType: "connect4", Rewrites: true, AttachedAt: parent},
			{ID: rev.ID, Name: "md_test_rev", Type: "cgroup_sock_addr", Tag: rev.Tag, AttachType: "recvmsg4", AttachedAt: parent},
		}},
		{name: "the parent itself", dir: parent, want: []cgroupbpf.Program{
			{ID: lb.ID, Name: "md_test_lb", Type: "cgroup_sock_addr", Tag: lb.Tag, AttachType: "connect4", Rewrites: true, AttachedAt: parent},
			{ID: rev.ID, Name: "md_test_rev", Type: "cgroup_sock_addr", Tag: rev.Tag, AttachType: "recvmsg4", AttachedAt: parent},
		}},
		{name: "a cgroup without programs", dir: bare},
		{name: "a cgroup that vanished", dir: gone, wantErr: fs.ErrNotExist},
		{name: "not a cgroup", dir: t.TempDir(), wantErr: cgroupbpf.ErrNotCgroup2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cgroupbpf.Effective(t.Context(), tc.dir, cgroupbpf.SocketLBAttachTypes())
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The test cgroups sit under the mount's root, where the node's own programs (if any)
			// are effective too; keep the test's.
			got = slices.DeleteFunc(got, func(p cgroupbpf.Program) bool { return p.ID != lb.ID && p.ID != rev.ID })
			if !slices.Equal(got, tc.want) {
				t.Errorf("effective programs\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// Reading leaves every cgroup's attachments as they were: same program ids at every attach
// point of the child, its parent and the mount's root, before and after.
func TestEffectiveIsReadOnly(t *testing.T) {
	testbed.RequirePrivileged(t)
	parent := cgroupbpftest.NewCgroup(t, "")
	child := cgroupbpftest.NewCgroup(t, parent)
	cgroupbpftest.AttachSockAddr(t, parent, cgroupbpf.Inet6Connect, "md_test_lb6")
	cgroupbpftest.Unchanged(t, []string{child, parent}, func() {
		for range 3 {
			if _, err := cgroupbpf.Effective(t.Context(), child, cgroupbpf.SocketLBAttachTypes()); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// This test process's own cgroup resolves to an existing cgroup2 directory listing its pid.
func TestProcessCgroupSelf(t *testing.T) {
	testbed.RequirePrivileged(t)
	cgroupbpftest.Mount(t)
	dir, err := cgroupbpf.ProcessCgroup("/", uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(splitLines(string(procs)), strconv.Itoa(os.Getpid())) {
		t.Errorf("%s/cgroup.procs does not list pid %d:\n%s", dir, os.Getpid(), procs)
	}
	if _, err := cgroupbpf.ProcessCgroup("/", 1<<30); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a pid that does not exist: err = %v", err)
	}
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}
