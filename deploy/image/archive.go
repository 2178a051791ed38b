package image

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations an archive's index gives its manifest: containerd (`ctr images import`) names the
// image by the first, the OCI layout by the second (the tag alone, as `docker save` writes it).
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// WriteArchive writes img as an OCI image layout in one tar (oci-layout, index.json naming ref,
// blobs/sha256/…), with a `docker save` manifest.json beside it that points at the same blobs.
// `ctr images import` (containerd 1.6 and later) and skopeo's oci-archive read it as OCI, with the
// manifest's bytes and digest unchanged; `docker load` and crane read manifest.json. Entries are
// in a fixed order with the image's creation time as theirs, so equal images give equal archives.
func WriteArchive(w io.Writer, img v1.Image, ref string) error {
	// Strict: the tag is explicit, and the name is written as given (containerd and a registry
	// spell the default registry differently).
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	mtime := cfg.Created.UTC()
	desc, err := descriptor(img)
	if err != nil {
		return err
	}
	desc.Platform = &v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture}
	desc.Annotations = map[string]string{annotationContainerdName: ref, annotationRefName: tag.TagStr()}
	index, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{*desc}})
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	blobs := map[string][]byte{
		blobPath(desc.Digest): manifest,
		blobPath(v1.Hash{Algorithm: "sha256", Hex: sha256Hex(config)}): config,
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("image layers: %w", err)
	}
	var layerPaths []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer digest: %w", err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		blobs[blobPath(d)] = b
		layerPaths = append(layerPaths, blobPath(d))
	}
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config": blobPath(v1.Hash{Algorithm: "sha256", Hex: sha256Hex(config)}), "RepoTags": []string{ref}, "Layers": layerPaths,
	}})
	if err != nil {
		return fmt.Errorf("docker manifest: %w", err)
	}

	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		hdr := &tar.Header{Name: name, Mode: 0o644, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(data)), Format: tar.FormatPAX}
		if strings.HasSuffix(name, "/") {
			hdr.Mode, hdr.Typeflag, hdr.Size = 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("image archive: %s: %w", name, err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("image archive: %s: %w", name, err)
		}
		return nil
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", index); err != nil {
		return err
	}
	if err := put("manifest.json", dockerManifest); err != nil {
		return err
	}
	if err := put("blobs/", nil); err != nil {
		return err
	}
	if err := put("blobs/sha256/", nil); err != nil {
		return err
	}
	paths := make([]string, 0, len(blobs))
	for p := range blobs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if err := put(p, blobs[p]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("image archive: %w", err)
	}
	return nil
}

func descriptor(img v1.Image) (*v1.Descriptor, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("image digest: %w", err)
	}
	size, err := img.Size()
	if err != nil {
		return nil, fmt.Errorf("image size: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return nil, fmt.Errorf("image media type: %w", err)
	}
	return &v1.Descriptor{MediaType: mt, Size: size, Digest: d}, nil
}

func blobPath(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

// Archived is what an archive WriteArchive wrote says of its image.
type Archived struct {
	// Ref is the name containerd gives the image on import.
	Ref string
	// Digest is the manifest's digest: the image's digest in containerd and in a registry.
	Digest v1.Hash
	// Manifest and Config are the image's manifest and config, parsed.
	Manifest v1.Manifest
	Config   v1.ConfigFile
	// Layers are the layers' blobs (compressed), in the manifest's order.
	Layers [][]byte
}

// ReadArchive reads an archive WriteArchive wrote.
func ReadArchive(archive string) (Archived, error) {
	f, err := os.Open(archive)
	if err != nil {
		return Archived{}, fmt.Errorf("image archive: %w", err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Archived{}, fmt.Errorf("image archive %s: %w", archive, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return Archived{}, fmt.Errorf("image archive %s: %s: %w", archive, hdr.Name, err)
		}
		files[hdr.Name] = b
	}
	var index v1.IndexManifest
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		return Archived{}, fmt.Errorf("image archive %s: index.json: %w", archive, err)
	}
	if len(index.Manifests) != 1 {
		return Archived{}, fmt.Errorf("image archive %s: %d manifests in index.json, want 1", archive, len(index.Manifests))
	}
	desc := index.Manifests[0]
	a := Archived{Ref: desc.Annotations[annotationContainerdName], Digest: desc.Digest}
	m, ok := files[blobPath(desc.Digest)]
	if !ok || sha256Hex(m) != desc.Digest.Hex {
		return Archived{}, fmt.Errorf("image archive %s: manifest %s missing or not matching its digest", archive, desc.Digest)
	}
	if err := json.Unmarshal(m, &a.Manifest); err != nil {
		return Archived{}, fmt.Errorf("image archive %s: manifest: %w", archive, err)
	}
	if err := json.Unmarshal(files[blobPath(a.Manifest.Config.Digest)], &a.Config); err != nil {
		return Archived{}, fmt.Errorf("image archive %s: config: %w", archive, err)
	}
	for _, l := range a.Manifest.Layers {
		b, ok := files[blobPath(l.Digest)]
		if !ok || sha256Hex(b) != l.Digest.Hex {
			return Archived{}, fmt.Errorf("image archive %s: layer %s missing or not matching its digest", archive, l.Digest)
		}
		a.Layers = append(a.Layers, b)
	}
	return a, nil
}
