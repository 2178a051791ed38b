package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/meshdoctor/meshdoctor/deploy/image"
)

// agentBinary returns the binary under test ($MESHDOCTOR_BIN, what `make test` builds) or builds
// it as `make build` does.
func agentBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("MESHDOCTOR_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "meshdoctor")
	build := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=test", "-o", bin, "github.com/meshdoctor/meshdoctor/cmd/meshdoctor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building meshdoctor: %v\n%s", err, out)
	}
	return bin
}

// archive builds the image of spec and writes its archive, as `make image` does.
func archive(t *testing.T, spec image.Spec, ref string) ([]byte, image.Built) {
	t.Helper()
	built, err := image.Build(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := image.WriteArchive(&buf, built.Image, ref); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), built
}

func TestImage(t *testing.T) {
	bin := agentBinary(t)
	base := image.Spec{Binary: bin, Version: "v1.2.3", Revision: "0123456789abcdef0123456789abcdef01234567",
		Source: "https://github.com/meshdoctor/meshdoctor", Created: time.Unix(1765000000, 0).UTC()}
	const ref = "ghcr.io/meshdoctor/meshdoctor:v1.2.3"
	first, built := archive(t, base, ref)

	t.Run("two builds are byte-identical", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			change func(*image.Spec)
			same   bool
		}{
			{name: "same spec", change: func(*image.Spec) {}, same: true},
			// Only whole seconds go into the image, as SOURCE_DATE_EPOCH has them.
			{name: "same second", change: func(s *image.Spec) { s.Created = s.Created.Add(400 * time.Millisecond) }, same: true},
			{name: "another time", change: func(s *image.Spec) { s.Created = s.Created.Add(time.Second) }},
			{name: "another version", change: func(s *image.Spec) { s.Version = "v1.2.4" }},
			{name: "another revision", change: func(s *image.Spec) { s.Revision = strings.Repeat("f", 40) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				spec := base
				tc.change(&spec)
				again, rebuilt := archive(t, spec, ref)
				d1, err := built.Image.Digest()
				if err != nil {
					t.Fatal(err)
				}
				d2, err := rebuilt.Image.Digest()
				if err != nil {
					t.Fatal(err)
				}
				if got := bytes.Equal(first, again) && d1 == d2; got != tc.same {
					t.Errorf("archives equal and digests %s, %s equal: %v, want %v", d1, d2, got, tc.same)
				}
			})
		}
	})

	t.Run("a reference needs a tag", func(t *testing.T) {
		for _, ref := range []string{"ghcr.io/meshdoctor/meshdoctor", "ghcr.io/Meshdoctor:v1"} {
			if err := image.WriteArchive(io.Discard, built.Image, ref); err == nil {
				t.Errorf("%s: written, want an error", ref)
			}
		}
	})

	path := filepath.Join(t.TempDir(), "meshdoctor-image.tar")
	if err := os.WriteFile(path, first, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := image.ReadArchive(path)
	if err != nil {
		t.Fatal(err)
	}

	// What crane push reads of it: the layout (the archive unpacked), whose image must be the
	// one built, digest and all; and manifest.json, as crane and docker load read a tarball.
	t.Run("go-containerregistry reads it", func(t *testing.T) {
		want, err := built.Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if out, err := exec.CommandContext(t.Context(), "tar", "-xf", path, "-C", dir).CombinedOutput(); err != nil {
			t.Fatalf("unpacking the archive: %v\n%s", err, out)
		}
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			t.Fatal(err)
		}
		fromLayout, err := idx.Image(want)
		if err != nil {
			t.Fatal(err)
		}
		fromTarball, err := tarball.ImageFromPath(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, img := range map[string]v1.Image{"layout": fromLayout, "docker tarball": fromTarball} {
			if err := validate.Image(img); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			wantConfig, _ := built.Image.ConfigName()
			if got, err := img.ConfigName(); err != nil || got != wantConfig {
				t.Errorf("%s: config %s (%v), want %s", name, got, err, wantConfig)
			}
		}
		if got, err := fromLayout.Digest(); err != nil || got != want {
			t.Errorf("layout: digest %s (%v), want %s", got, err, want)
		}
	})

	t.Run("config", func(t *testing.T) {
		digest, err := built.Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if got.Ref != ref || got.Digest != digest {
			t.Errorf("archive names %s@%s, want %s@%s", got.Ref, got.Digest, ref, digest)
		}
		c := got.Config.Config
		// uid 0 said explicitly: Kubernetes grants the DaemonSet's added capabilities to root only.
		if c.User != "0:0" || strings.Join(c.Entrypoint, " ") != image.BinaryPath || strings.Join(c.Cmd, " ") != "agent" {
			t.Errorf("user %q entrypoint %q cmd %q, want 0:0 %s agent", c.User, c.Entrypoint, c.Cmd, image.BinaryPath)
		}
		if got.Config.OS != "linux" || got.Config.Architecture != runtime.GOARCH || got.Config.RootFS.Type != "layers" {
			t.Errorf("os %s arch %s rootfs %q, want linux %s layers", got.Config.OS, got.Config.Architecture, got.Config.RootFS.Type, runtime.GOARCH)
		}
		if !got.Config.Created.Equal(base.Created) {
			t.Errorf("created %s, want %s", got.Config.Created, base.Created)
		}
		for k, want := range map[string]string{
			image.AnnotationSource: base.Source, image.AnnotationVersion: base.Version, image.AnnotationRevision: base.Revision,
			image.AnnotationCreated: "2025-12-06T05:46:40Z",
		} {
			if got.Manifest.Annotations[k] != want || c.Labels[k] != want {
				t.Errorf("%s: annotation %q, label %q, want %q", k, got.Manifest.Annotations[k], c.Labels[k], want)
			}
		}
	})

	t.Run("layer", func(t *testing.T) {
		if len(got.Layers) != 1 {
			t.Fatalf("%d layers, want 1", len(got.Layers))
		}
		files := layerFiles(t, got.Layers[0], base.Created)
		want, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		for name, content := range map[string][]byte{
			strings.TrimPrefix(image.BinaryPath, "/"): want,
			strings.TrimPrefix(image.SBOMPath, "/"):   built.SBOM,
		} {
			if !bytes.Equal(files[name], content) {
				t.Errorf("%s in the layer is not what was built (%d bytes, want %d)", name, len(files[name]), len(content))
			}
		}
		if !strings.HasPrefix(string(files["etc/passwd"]), "root:x:0:0:") {
			t.Errorf("etc/passwd: %q", files["etc/passwd"])
		}
	})

	t.Run("SBOM lists the linked modules", func(t *testing.T) {
		pkgs, err := image.ReadSPDXPackages(built.SBOM)
		if err != nil {
			t.Fatal(err)
		}
		versions := map[string]string{}
		comments := map[string]string{}
		for _, p := range pkgs {
			versions[p.Name] = p.VersionInfo
			comments[p.Name] = p.Comment
		}
		if versions["github.com/meshdoctor/meshdoctor"] != base.Version {
			t.Errorf("main module version %q, want %q", versions["github.com/meshdoctor/meshdoctor"], base.Version)
		}
		goSum, err := os.ReadFile("../../go.sum")
		if err != nil {
			t.Fatal(err)
		}
		for _, mod := range []string{"github.com/vishvananda/netns", "github.com/vishvananda/netlink", "github.com/spf13/cobra",
			"k8s.io/client-go", "google.golang.org/grpc"} {
			t.Run(mod, func(t *testing.T) {
				v := versions[mod]
				if v == "" {
					t.Fatalf("%s not in the SBOM", mod)
				}
				// The version and the hash go.sum holds for it: the module that was checked is the one linked.
				line := mod + " " + v + " " + strings.TrimPrefix(comments[mod], "go.sum ")
				if !strings.Contains(string(goSum), line+"\n") {
					t.Errorf("go.sum has no line %q", line)
				}
			})
		}
		// Every module `go version -m` reads from the binary, and no other.
		out, err := exec.CommandContext(t.Context(), "go", "version", "-m", bin).Output()
		if err != nil {
			t.Fatalf("go version -m: %v", err)
		}
		linked := map[string]string{}
		var last string
		for line := range strings.Lines(string(out)) {
			switch f := strings.Fields(line); {
			case len(f) >= 3 && f[0] == "dep":
				last = f[1]
				linked[f[1]] = f[2]
			case len(f) >= 3 && f[0] == "=>": // the replacement of the dep above is what was linked
				delete(linked, last)
				linked[f[1]] = f[2]
			}
		}
		for _, p := range pkgs {
			if p.Name == "github.com/meshdoctor/meshdoctor" || p.Name == "stdlib" {
				continue
			}
			if linked[p.Name] != p.VersionInfo {
				t.Errorf("SBOM lists %s %s, the binary %q", p.Name, p.VersionInfo, linked[p.Name])
			}
			delete(linked, p.Name)
		}
		if len(linked) > 0 {
			t.Errorf("linked but not in the SBOM: %v", linked)
		}
		// A module of the build tool only is not in the agent.
		if _, ok := versions["github.com/google/go-containerregistry"]; ok {
			t.Error("the SBOM lists go-containerregistry, which the agent does not link")
		}
		if versions["stdlib"] == "" || !strings.HasPrefix(versions["stdlib"], "go1.") {
			t.Errorf("stdlib version %q", versions["stdlib"])
		}
	})
}

// layerFiles reads a gzipped layer, checking that every entry is root's with the build's time.
func layerFiles(t *testing.T, layer []byte, mtime time.Time) map[string][]byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(mtime) {
			t.Errorf("%s: uid %d gid %d mtime %s, want 0 0 %s", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime, mtime)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = b
	}
	return files
}

func TestBuildRefuses(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, binary, want string
	}{
		{name: "missing", binary: filepath.Join(dir, "none"), want: "no such file"},
		{name: "not ELF", binary: notELF, want: "not an ELF binary"},
		// The image has no libc: a binary that needs the dynamic loader would not start.
		{name: "dynamic", binary: dynamicBinary(t), want: "dynamically linked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := image.Build(t.Context(), image.Spec{Binary: tc.binary})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func dynamicBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/bin/true", "/usr/bin/true", "/bin/sh"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("no dynamically linked binary on this machine")
	return ""
}
