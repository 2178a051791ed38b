package cgroupbpf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNoCgroup2 is returned when a process has no cgroup v2 membership (a cgroup v1-only node) or
// no cgroup2 mount of this process shows its cgroup.
var ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy")

// ProcessCgroup returns the cgroup v2 directory of process pid, as this process can open it. The
// process's /proc/PID/cgroup is read under hostRoot (the node's /proc, as pod netns paths are),
// and its "0::" path is joined with a cgroup2 mount of this process (/proc/self/mountinfo). Both
// files show cgroup paths relative to this process's cgroup namespace, so a mount whose root is
// an ancestor of the path shows the cgroup whatever namespace the agent runs in.
func ProcessCgroup(hostRoot string, pid uint32) (string, error) {
	mounts, err := SelfMounts()
	if err != nil {
		return "", err
	}
	path, err := ProcessPath(hostRoot, pid)
	if err != nil {
		return "", err
	}
	return Resolve(mounts, path)
}

// SelfMounts lists the cgroup2 mounts of this process's mount namespace.
func SelfMounts() ([]Mount, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading this process's mounts: %w", err)
	}
	return Cgroup2Mounts(mi), nil
}

// ProcessPath returns the cgroup v2 path of process pid (its /proc/PID/cgroup "0::" line, read
// under hostRoot), relative to this process's cgroup namespace.
func ProcessPath(hostRoot string, pid uint32) (string, error) {
	if hostRoot == "" {
		hostRoot = "/"
	}
	procFile := filepath.Join(hostRoot, "proc", strconv.FormatUint(uint64(pid), 10), "cgroup")
	data, err := os.ReadFile(procFile)
	if err != nil {
		return "", fmt.Errorf("reading the cgroup of process %d: %w", pid, err)
	}
	path, err := UnifiedPath(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", procFile, err)
	}
	return path, nil
}

// UnifiedPath returns the cgroup v2 path of a /proc/PID/cgroup file: its "0::PATH" line.
func UnifiedPath(procCgroup []byte) (string, error) {
	for line := range bytes.Lines(procCgroup) {
		if rest, ok := bytes.CutPrefix(bytes.TrimRight(line, "\n"), []byte("0::")); ok {
			return string(rest), nil
		}
	}
	return "", fmt.Errorf("%w: no 0:: line", ErrNoCgroup2)
}

// Mount is a cgroup2 mount: the cgroup it shows at its mount point (Root, relative to the reader's
// cgroup namespace as in /proc/self/mountinfo) and where.
type Mount struct {
	Root, Point string
}

// Cgroup2Mounts lists the cgroup2 mounts of a mountinfo file.
func Cgroup2Mounts(mountinfo []byte) []Mount {
	var out []Mount
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		//
		// The kernel separates fields by one space and escapes only space, tab, newline and
		// backslash in them: a field may hold any other byte, \r or U+00A0 too, so no Fields;
		// and the separator is the first "-" after POINT, ROOT and POINT may be "-" themselves.
		f := strings.Split(sc.Text(), " ")
		if len(f) < 7 {
			continue
		}
		sep := slices.Index(f[5:], "-")
		if sep < 0 || 5+sep+1 >= len(f) || f[5+sep+1] != "cgroup2" {
			continue
		}
		out = append(out, Mount{Root: unescapeMountinfo(f[3]), Point: unescapeMountinfo(f[4])})
	}
	return out
}

// Resolve finds the directory of cgroup path under one of the mounts: the first whose root is
// the path or one of its ancestors. Paths are compared component by component and never cleaned:
// a path outside the reader's cgroup namespace starts with "/..", and cleaning would make it a
// different cgroup.
func Resolve(mounts []Mount, path string) (string, error) {
	if len(mounts) == 0 {
		return "", fmt.Errorf("%w: no cgroup2 mount in this process's mount namespace", ErrNoCgroup2)
	}
	for _, m := range mounts {
		rel, ok := under(m.Root, path)
		if !ok {
			continue
		}
		dir := filepath.Join(m.Point, rel)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		return dir, nil
	}
	return "", fmt.Errorf("%w: cgroup %s is under none of the cgroup2 mounts of this process (%d); mount the node's cgroup2 hierarchy",
		ErrNoCgroup2, path, len(mounts))
}

// under returns path relative to root when root is path or one of its ancestors.
func under(root, path string) (string, bool) {
	rc := components(root)
	pc := components(path)
	if len(rc) > len(pc) {
		return "", false
	}
	for i := range rc {
		if rc[i] != pc[i] {
			return "", false
		}
	}
	rest := pc[len(rc):]
	for _, c := range rest {
		if c == ".." {
			return "", false
		}
	}
	return strings.Join(rest, "/"), true
}

func components(p string) []string {
	var out []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// unescapeMountinfo undoes the octal escapes (\040 for a space…) of mountinfo fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
