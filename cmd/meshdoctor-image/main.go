// Command meshdoctor-image builds meshdoctor's OCI image from the static binary without a
// container engine (deploy/image), and writes it as an OCI layout tar with the binary's SPDX SBOM
// beside it. Two runs over the same binary with the same -created give the same bytes.
//
// Usage (what `make image` runs):
//
//	go run ./cmd/meshdoctor-image -binary bin/meshdoctor -ref ghcr.io/meshdoctor/meshdoctor:v1 \
//	  -version v1 -revision $(git rev-parse HEAD) -created $(git log -1 --format=%ct) \
//	  -out bin/meshdoctor-image.tar -sbom bin/meshdoctor.spdx.json
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/meshdoctor/meshdoctor/deploy/image"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshdoctor-image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("meshdoctor-image", flag.ContinueOnError)
	var (
		spec    image.Spec
		ref     = fs.String("ref", "", "the image's name, with registry and tag (e.g. ghcr.io/meshdoctor/meshdoctor:v1)")
		out     = fs.String("out", "bin/meshdoctor-image.tar", "the OCI layout tar to write")
		sbom    = fs.String("sbom", "bin/meshdoctor.spdx.json", "the SPDX SBOM to write beside it (empty: none)")
		created = fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "every time stamp in the image, in Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	)
	fs.StringVar(&spec.Binary, "binary", "bin/meshdoctor", "the static meshdoctor binary")
	fs.StringVar(&spec.Version, "version", "", "org.opencontainers.image.version")
	fs.StringVar(&spec.Revision, "revision", "", "org.opencontainers.image.revision (the commit)")
	fs.StringVar(&spec.Source, "source", "https://github.com/meshdoctor/meshdoctor", "org.opencontainers.image.source")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *ref == "" {
		return errors.New("-ref is required")
	}
	secs := int64(0)
	if *created != "" {
		var err error
		if secs, err = strconv.ParseInt(*created, 10, 64); err != nil {
			return fmt.Errorf("-created %q: not Unix seconds: %w", *created, err)
		}
	}
	spec.Created = time.Unix(secs, 0).UTC()

	built, err := image.Build(ctx, spec)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := image.WriteArchive(&buf, built.Image, *ref); err != nil {
		return err
	}
	if err := writeFile(*out, buf.Bytes()); err != nil {
		return err
	}
	if *sbom != "" {
		if err := writeFile(*sbom, built.SBOM); err != nil {
			return err
		}
	}
	digest, err := built.Image.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	_, err = fmt.Fprintf(stdout, "%s %s@%s (%d bytes)\n", *out, *ref, digest, buf.Len())
	return err
}

// writeFile replaces path in one rename, so a failed build leaves no half-written archive.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
