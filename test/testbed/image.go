package testbed

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Image is a container image made on the test machine from files of the host: binaries with the
// shared libraries they load, directories, symlinks. WriteArchive writes it in the format of
// `docker save`, which `ctr images import` reads, so the test bed never needs a registry.
type Image struct {
	// Name is the image reference, with a registry host so no "docker.io/library/" is added
	// (e.g. "meshdoctor.test/pause:1").
	Name       string
	Entrypoint []string
	Env        []string
	entries    map[string]imageEntry // by absolute path in the image
}

type imageEntry struct {
	src     string // host file to copy; empty for a directory or a symlink
	link    string // symlink target
	dir     bool
	mode    fs.FileMode
	content []byte // literal content, when src is empty and it is a file
}

// NewImage starts an empty image.
func NewImage(name string, entrypoint ...string) *Image {
	return &Image{
		Name:       name,
		Entrypoint: entrypoint,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		entries:    map[string]imageEntry{},
	}
}

// AddDir adds an empty directory (and its parents).
func (im *Image) AddDir(dst string) {
	im.entries[path.Clean(dst)] = imageEntry{dir: true, mode: 0o755}
}

// AddSymlink adds dst pointing at target.
func (im *Image) AddSymlink(dst, target string) {
	im.entries[path.Clean(dst)] = imageEntry{link: target, mode: 0o777}
}

// AddContent adds a file with literal content.
func (im *Image) AddContent(dst string, content []byte, mode fs.FileMode) {
	im.entries[path.Clean(dst)] = imageEntry{content: content, mode: mode}
}

// AddFile copies the host file src (symlinks followed) to dst in the image.
func (im *Image) AddFile(src, dst string) error {
	info, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	if info.IsDir() {
		return fmt.Errorf("image %s: %s is a directory", im.Name, src)
	}
	im.entries[path.Clean(dst)] = imageEntry{src: src, mode: info.Mode().Perm()}
	return nil
}

// AddBinary copies an executable to dst and the shared libraries ldd says it loads to their own
// paths, so a dynamically linked host binary runs in the image.
func (im *Image) AddBinary(ctx context.Context, src, dst string) error {
	if err := im.AddFile(src, dst); err != nil {
		return err
	}
	return im.addLibraries(ctx, src)
}

// AddTree copies the regular files of a host directory, and the libraries they load, to dst.
func (im *Image) AddTree(ctx context.Context, srcDir, dst string) error {
	entries, err := os.ReadDir(srcDir)
	if err != nil {
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	im.AddDir(dst)
	var libs []string
	for _, e := range entries {
		src := filepath.Join(srcDir, e.Name())
		if e.IsDir() {
			continue
		}
		if err := im.AddFile(src, path.Join(dst, e.Name())); err != nil {
			return err
		}
		if strings.HasSuffix(e.Name(), ".so") {
			libs = append(libs, src)
		}
	}
	return im.addLibraries(ctx, libs...)
}

// libDirs are where the dynamic loader finds libraries on Debian (multiarch first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
	"/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// addLibraries adds the shared libraries the ELF files load (DT_NEEDED, recursively) and their
// program interpreter. It reads the ELF headers itself: ldd runs the loader once per file, which
// takes seconds for iptables' hundred extension modules.
func (im *Image) addLibraries(_ context.Context, files ...string) error {
	queue := append([]string(nil), files...)
	for len(queue) > 0 {
		file := queue[0]
		queue = queue[1:]
		f, err := elf.Open(file)
		if err != nil {
			var fe *elf.FormatError
			if errors.As(err, &fe) {
				continue // not ELF (a script): nothing to load
			}
			return fmt.Errorf("image %s: %w", im.Name, err)
		}
		needed, err := f.ImportedLibraries()
		var interp string
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				data := make([]byte, p.Filesz)
				if _, err := p.ReadAt(data, 0); err == nil {
					interp = strings.TrimRight(string(data), "\x00")
				}
			}
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("image %s: reading %s: %w", im.Name, file, err)
		}
		var libs []string
		if interp != "" {
			libs = append(libs, interp)
		}
		for _, name := range needed {
			lib, err := findLibrary(name)
			if err != nil {
				return fmt.Errorf("image %s: %s needs %w", im.Name, file, err)
			}
			libs = append(libs, lib)
		}
		for _, lib := range libs {
			if _, ok := im.entries[lib]; ok {
				continue
			}
			if err := im.AddFile(lib, lib); err != nil {
				return err
			}
			queue = append(queue, lib)
		}
	}
	return nil
}

func findLibrary(name string) (string, error) {
	for _, d := range libDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s, not found in %s", name, strings.Join(libDirs, " "))
}

// WriteArchive writes the image as a `docker save` archive at dst: one layer, its config and
// manifest.json naming it.
func (im *Image) WriteArchive(dst string) error {
	layer, err := im.layer()
	if err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer)
	diffID := "sha256:" + hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": im.Entrypoint, "Env": im.Env},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	if err != nil {
		return fmt.Errorf("image %s config: %w", im.Name, err)
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{im.Name}, "Layers": []string{layerName},
	}})
	if err != nil {
		return fmt.Errorf("image %s manifest: %w", im.Name, err)
	}

	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerName, layer}, {"manifest.json", manifest}} {
		if dir := path.Dir(e.name); dir != "." {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}); err != nil {
				f.Close()
				return fmt.Errorf("image %s: %w", im.Name, err)
			}
		}
		if err := writeTarFile(tw, e.name, e.data, 0o644); err != nil {
			f.Close()
			return fmt.Errorf("image %s: %w", im.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	return nil
}

// layer renders the image's files as one uncompressed layer tar, parents before children.
func (im *Image) layer() ([]byte, error) {
	all := map[string]imageEntry{}
	for p, e := range im.entries {
		all[p] = e
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = imageEntry{dir: true, mode: 0o755}
			}
		}
	}
	for _, d := range []string{"/tmp", "/run", "/proc", "/sys", "/dev", "/etc"} {
		if _, ok := all[d]; !ok {
			all[d] = imageEntry{dir: true, mode: 0o755}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := all[p]
		name := strings.TrimPrefix(p, "/")
		var err error
		switch {
		case e.dir:
			mode := int64(e.mode)
			if p == "/tmp" {
				mode = 0o1777
			}
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode})
		case e.link != "":
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: e.link, Mode: 0o777})
		case e.src != "":
			var data []byte
			if data, err = os.ReadFile(e.src); err == nil {
				err = writeTarFile(tw, name, data, int64(e.mode))
			}
		default:
			err = writeTarFile(tw, name, e.content, int64(e.mode))
		}
		if err != nil {
			return nil, fmt.Errorf("image %s: %s: %w", im.Name, p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image %s: %w", im.Name, err)
	}
	return buf.Bytes(), nil
}

func writeTarFile(tw *tar.Writer, name string, data []byte, mode int64) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := io.Copy(tw, bytes.NewReader(data))
	return err
}

// BuildPauseImage writes the sandbox image (SandboxImage) as an archive under dir: the test bed's
// static pause binary (test/cmd/pause), built with the Go toolchain.
func BuildPauseImage(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "github.com/meshdoctor/meshdoctor/test/cmd/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the pause binary: %w\n%s", err, out)
	}
	im := NewImage(SandboxImage, "/pause")
	if err := im.AddFile(bin, "/pause"); err != nil {
		return "", err
	}
	archive := filepath.Join(dir, "pause.tar")
	return archive, im.WriteArchive(archive)
}

// busyboxApplets are the commands the test bed's containers run besides pilot-agent.
var busyboxApplets = []string{"sh", "sleep", "cat", "true", "false", "echo", "ls", "id", "env", "mkdir", "httpd"}

// ProxyStandIn is where IstioImage carries the test bed's stand-in for a running istio-proxy
// (test/cmd/proxy-standin).
const ProxyStandIn = "/usr/local/bin/proxy-standin"

// BuildIstioImage writes IstioImage as an archive under dir: Istio's pilot-agent at
// /usr/local/bin, Debian's iptables (nft and legacy, both families, with their extension modules
// and libraries) under the names pilot-agent looks for, Debian's nft, busybox, and the proxy's
// stand-in (ProxyStandIn), built with the Go toolchain.
func BuildIstioImage(ctx context.Context, dir, pilotAgent string) (string, error) {
	im := NewImage(IstioImage, "/usr/local/bin/pilot-agent")
	if err := im.AddFile(pilotAgent, "/usr/local/bin/pilot-agent"); err != nil {
		return "", err
	}
	standIn := filepath.Join(dir, "proxy-standin")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", standIn, "github.com/meshdoctor/meshdoctor/test/cmd/proxy-standin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the proxy's stand-in: %w\n%s", err, out)
	}
	if err := im.AddFile(standIn, ProxyStandIn); err != nil {
		return "", err
	}
	for _, multi := range []string{"xtables-nft-multi", "xtables-legacy-multi"} {
		src, err := findTool(multi)
		if err != nil {
			return "", err
		}
		if err := im.AddBinary(ctx, src, "/usr/sbin/"+multi); err != nil {
			return "", err
		}
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			im.AddSymlink("/usr/sbin/"+fam+suffix, "xtables-nft-multi")
			im.AddSymlink("/usr/sbin/"+fam+"-nft"+suffix, "xtables-nft-multi")
			im.AddSymlink("/usr/sbin/"+fam+"-legacy"+suffix, "xtables-legacy-multi")
		}
	}
	// Istio's proxy image carries nft too: with native nftables pilot-agent writes the rules
	// through it.
	nft, err := findTool("nft")
	if err != nil {
		return "", err
	}
	if err := im.AddBinary(ctx, nft, "/usr/sbin/nft"); err != nil {
		return "", err
	}
	extDirs, _ := filepath.Glob("/usr/lib/*/xtables")
	if len(extDirs) == 0 {
		return "", fmt.Errorf("image %s: no iptables extension directory under /usr/lib", im.Name)
	}
	for _, d := range extDirs {
		if err := im.AddTree(ctx, d, d); err != nil {
			return "", err
		}
	}
	busybox, err := findTool("busybox")
	if err != nil {
		return "", err
	}
	if err := im.AddBinary(ctx, busybox, "/bin/busybox"); err != nil {
		return "", err
	}
	for _, a := range busyboxApplets {
		im.AddSymlink("/bin/"+a, "busybox")
	}
	if _, err := os.Stat("/etc/protocols"); err == nil {
		if err := im.AddFile("/etc/protocols", "/etc/protocols"); err != nil {
			return "", err
		}
	}
	im.AddContent("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nistio-proxy:x:1337:1337::/tmp:/bin/sh\n"), 0o644)
	im.AddContent("/etc/group", []byte("root:x:0:\nistio-proxy:x:1337:\n"), 0o644)
	archive := filepath.Join(dir, "istio.tar")
	return archive, im.WriteArchive(archive)
}
