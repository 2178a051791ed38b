// Package image builds meshdoctor's OCI image from the static binary, without a container engine:
// one layer on an empty (scratch) base, every byte fixed by its inputs, so two builds of the same
// binary at the same time stamp give the same digest. It also writes the binary's SPDX SBOM.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where the image keeps what it carries.
const (
	BinaryPath = "/meshdoctor"
	// SBOMPath is the SBOM inside the image, where scanners that look for *.spdx.json find it.
	SBOMPath = "/usr/share/doc/meshdoctor/meshdoctor.spdx.json"
)

// OCI annotation and label keys the image carries.
const (
	AnnotationSource   = "org.opencontainers.image.source"
	AnnotationVersion  = "org.opencontainers.image.version"
	AnnotationRevision = "org.opencontainers.image.revision"
	AnnotationCreated  = "org.opencontainers.image.created"
	AnnotationTitle    = "org.opencontainers.image.title"
)

// Spec is what an image is built from. Everything that ends up in the image comes from here, so
// equal specs give equal digests.
type Spec struct {
	// Binary is the static meshdoctor binary (`make build`).
	Binary string
	// Version, Revision and Source become the org.opencontainers.image.* labels and annotations.
	Version, Revision, Source string
	// Created is every time stamp in the image: config, history and the layer's files
	// (SOURCE_DATE_EPOCH or the commit's time).
	Created time.Time
}

// Built is an image in memory with the SBOM of its binary.
type Built struct {
	Image v1.Image
	SBOM  []byte
}

// Build makes the image: the binary at BinaryPath as its entrypoint with `agent` as its argument,
// the SBOM at SBOMPath, and the few files of distroless-static the agent can use (/etc/passwd
// and /etc/group naming root and nobody, /tmp). It carries no CA bundle and no time zone data:
// the agent speaks TLS to the API server only, with the service account's CA, and logs in UTC.
// Its user is 0:0, said explicitly: the DaemonSet's capabilities are granted to root only.
func Build(ctx context.Context, spec Spec) (Built, error) {
	bin, err := os.ReadFile(spec.Binary)
	if err != nil {
		return Built{}, fmt.Errorf("reading the binary: %w", err)
	}
	arch, err := staticArch(bin)
	if err != nil {
		return Built{}, fmt.Errorf("%s: %w", spec.Binary, err)
	}
	info, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		return Built{}, fmt.Errorf("reading the Go build info of %s: %w", spec.Binary, err)
	}
	sbom, err := SPDX(info, bin, spec)
	if err != nil {
		return Built{}, err
	}
	if err := ctx.Err(); err != nil {
		return Built{}, err
	}
	created := spec.Created.UTC().Truncate(time.Second)
	layerTar, err := rootfs(created, []file{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{name: BinaryPath[1:], mode: 0o755, data: bin},
		{name: "tmp/", mode: 0o1777},
		{name: SBOMPath[1:], mode: 0o644, data: sbom},
	})
	if err != nil {
		return Built{}, err
	}
	// Compressed once here: given gzip, the layer takes it as its blob instead of compressing again
	// for each of its digest, its size and its bytes.
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err != nil {
		return Built{}, fmt.Errorf("making the layer: %w", err)
	}
	if _, err := zw.Write(layerTar); err != nil {
		return Built{}, fmt.Errorf("making the layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return Built{}, fmt.Errorf("making the layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return Built{}, fmt.Errorf("making the layer: %w", err)
	}

	labels := map[string]string{
		AnnotationTitle:    "meshdoctor",
		AnnotationSource:   spec.Source,
		AnnotationVersion:  spec.Version,
		AnnotationRevision: spec.Revision,
		AnnotationCreated:  created.Format(time.RFC3339),
	}
	for k, v := range labels {
		if v == "" {
			delete(labels, k)
		}
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      v1.Time{Time: created},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Entrypoint: []string{BinaryPath},
			Cmd:        []string{"agent"},
			User:       "0:0",
			Labels:     labels,
		},
	})
	if err != nil {
		return Built{}, fmt.Errorf("writing the image config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "meshdoctor-image: " + BinaryPath + ", " + SBOMPath + ", /etc/passwd, /etc/group, /tmp",
		},
	})
	if err != nil {
		return Built{}, fmt.Errorf("adding the layer: %w", err)
	}
	img, ok := mutate.Annotations(img, labels).(v1.Image)
	if !ok {
		return Built{}, errors.New("annotating the manifest did not give an image")
	}
	return Built{Image: img, SBOM: sbom}, nil
}

// staticArch returns the OCI architecture of a statically linked ELF binary; a binary that needs
// a dynamic loader is refused, since the image has no libc.
func staticArch(bin []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return "", fmt.Errorf("not an ELF binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("dynamically linked (build it with CGO_ENABLED=0): the image has no libc")
		}
	}
	arch, ok := map[elf.Machine]string{
		elf.EM_X86_64: "amd64", elf.EM_AARCH64: "arm64", elf.EM_ARM: "arm", elf.EM_PPC64: "ppc64le",
		elf.EM_S390: "s390x", elf.EM_RISCV: "riscv64",
	}[f.Machine]
	if !ok {
		return "", fmt.Errorf("no OCI architecture for ELF machine %s", f.Machine)
	}
	return arch, nil
}

type file struct {
	name string // relative; a directory ends in "/"
	mode int64
	data []byte
}

// rootfs writes the layer's tar: parents before children, in name order, owned by root, every
// time stamp the same, no user or group names, so its bytes depend on the files alone.
func rootfs(mtime time.Time, files []file) ([]byte, error) {
	all := map[string]file{}
	for _, f := range files {
		all[f.name] = f
		for d := path.Dir(path.Clean(f.name)); d != "."; d = path.Dir(d) {
			if _, ok := all[d+"/"]; !ok {
				all[d+"/"] = file{name: d + "/", mode: 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		f := all[n]
		hdr := &tar.Header{Name: n, Mode: f.mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.data)), Format: tar.FormatPAX}
		if n[len(n)-1] == '/' {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", n, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
