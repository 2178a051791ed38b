package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/deploy/image"
)

func TestRun(t *testing.T) {
	bin := os.Getenv("MESHDOCTOR_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "meshdoctor")
		build := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", bin, "github.com/meshdoctor/meshdoctor/cmd/meshdoctor")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building meshdoctor: %v\n%s", err, out)
		}
	}
	for _, tc := range []struct {
		name    string
		args    []string
		env     string // SOURCE_DATE_EPOCH
		wantErr string
		created string // the image's creation time, when it is built
	}{
		{name: "from SOURCE_DATE_EPOCH", args: []string{"-ref", "meshdoctor.test/meshdoctor:1"}, env: "1765000000", created: "2025-12-06T05:46:40Z"},
		{name: "-created wins", args: []string{"-ref", "meshdoctor.test/meshdoctor:1", "-created", "1"}, env: "1765000000", created: "1970-01-01T00:00:01Z"},
		{name: "neither", args: []string{"-ref", "meshdoctor.test/meshdoctor:1"}, created: "1970-01-01T00:00:00Z"},
		{name: "no ref", wantErr: "-ref is required"},
		{name: "no tag", args: []string{"-ref", "meshdoctor.test/meshdoctor"}, wantErr: "image reference"},
		{name: "bad time", args: []string{"-ref", "meshdoctor.test/meshdoctor:1", "-created", "yesterday"}, wantErr: "not Unix seconds"},
		{name: "stray argument", args: []string{"-ref", "meshdoctor.test/meshdoctor:1", "bin/meshdoctor"}, wantErr: "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("SOURCE_DATE_EPOCH", tc.env)
			dir := t.TempDir()
			out, sbom := filepath.Join(dir, "out", "image.tar"), filepath.Join(dir, "sbom.json")
			args := append([]string{"-binary", bin, "-out", out, "-sbom", sbom}, tc.args...)
			var stdout bytes.Buffer
			err := run(t.Context(), args, &stdout)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				if _, err := os.Stat(out); err == nil {
					t.Errorf("%s written despite the error", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, err := image.ReadArchive(out)
			if err != nil {
				t.Fatal(err)
			}
			if got := a.Config.Created.UTC().Format("2006-01-02T15:04:05Z"); got != tc.created {
				t.Errorf("created %s, want %s", got, tc.created)
			}
			if want := "meshdoctor.test/meshdoctor:1@" + a.Digest.String(); !strings.Contains(stdout.String(), want) {
				t.Errorf("stdout %q does not name %s", stdout.String(), want)
			}
			if pkgs, err := image.ReadSPDXPackages(mustRead(t, sbom)); err != nil || len(pkgs) < 2 {
				t.Errorf("SBOM: %d packages (%v)", len(pkgs), err)
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
