package cgroupbpf

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// mangle escapes a mountinfo field as the kernel does (fs/proc_namespace.c: space, tab, newline
// and backslash as octal).
func mangle(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			b.WriteByte('\\')
			b.WriteByte('0' + c>>6)
			b.WriteByte('0' + c>>3&7)
			b.WriteByte('0' + c&7)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzProcFiles: whatever /proc/PID/mountinfo and /proc/PID/cgroup hold, reading them never
// panics; every cgroup2 mount read, written back as the kernel writes it, reads the same; the
// unified path is the 0:: line's; and a cgroup path resolved under a mount never leaves the
// mount point. Seeded with this machine's own files (this process's and init's) and the node
// layouts TestCgroup2Mounts and TestUnifiedPath hold.
func FuzzProcFiles(f *testing.F) {
	for _, pid := range []string{"self", "1"} {
		mi, err1 := os.ReadFile(filepath.Join("/proc", pid, "mountinfo"))
		cg, err2 := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
		if err1 == nil && err2 == nil {
			f.Add(mi, cg)
		}
	}
	f.Add([]byte(`40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 22 0:37 /../../.. /host/sys/fs/cgroup ro,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
42 22 0:37 / /with\040space rw - cgroup2 cgroup2 rw
`), []byte("12:pids:/kubepods/pod1/abc\n0::/../../kubepods.slice/cri-containerd-1.scope\n"))
	f.Add([]byte("30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"), []byte("4:memory:/x\n1:cpu:/x\n"))
	f.Fuzz(func(t *testing.T, mountinfo, procCgroup []byte) {
		mounts := Cgroup2Mounts(mountinfo)
		if n := strings.Count(string(mountinfo), "cgroup2"); len(mounts) > n {
			t.Fatalf("%d cgroup2 mounts from %d mentions of cgroup2", len(mounts), n)
		}
		for _, m := range mounts {
			line := "1 2 0:3 " + mangle(m.Root) + " " + mangle(m.Point) + " rw - cgroup2 cgroup2 rw\n"
			if back := Cgroup2Mounts([]byte(line)); !slices.Equal(back, []Mount{m}) {
				t.Fatalf("mount %q written back as %q reads %q", m, line, back)
			}
		}

		path, err := UnifiedPath(procCgroup)
		if err != nil {
			if !errors.Is(err, ErrNoCgroup2) {
				t.Fatalf("error %v is not ErrNoCgroup2", err)
			}
			return
		}
		if strings.Contains(path, "\n") || !strings.Contains(string(procCgroup), "0::"+path) {
			t.Fatalf("unified path %q is not a 0:: line of %q", path, procCgroup)
		}
		if back, err := UnifiedPath([]byte("0::" + path + "\n")); err != nil || back != path {
			t.Fatalf("unified path %q written back reads %q, %v", path, back, err)
		}

		// Any cgroup path, as the root and the point of a mount the kernel lists, reads back.
		if path != "" {
			m := Mount{Root: path, Point: path}
			line := "1 2 0:3 " + mangle(m.Root) + " " + mangle(m.Point) + " rw shared:1 - cgroup2 cgroup2 rw\n"
			if back := Cgroup2Mounts([]byte(line)); !slices.Equal(back, []Mount{m}) {
				t.Fatalf("mount %q as the kernel writes it, %q, reads %q", m, line, back)
			}
		}

		for _, m := range append(mounts, Mount{Root: "/", Point: "/sys/fs/cgroup"}) {
			rel, ok := under(m.Root, path)
			if !ok {
				continue
			}
			if slices.Contains(strings.Split(rel, "/"), "..") {
				t.Fatalf("%q under %q is %q, which climbs", path, m.Root, rel)
			}
			if want := strings.Join(append(components(m.Root), components(rel)...), "/"); want != strings.Join(components(path), "/") {
				t.Fatalf("%q under %q is %q: the root and it make %q", path, m.Root, rel, want)
			}
			point := "/mnt/cgroup"
			if dir := filepath.Join(point, rel); dir != point && !strings.HasPrefix(dir, point+"/") {
				t.Fatalf("%q under %q resolves to %q, outside the mount point", path, m.Root, dir)
			}
		}
	})
}
