package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// MeshdoctorEnv names the environment variable with the meshdoctor binary under test (make test
// sets it to the one it built).
const MeshdoctorEnv = "MESHDOCTOR_BIN"

// BuildMeshdoctor returns the meshdoctor binary end-to-end tests run: $MESHDOCTOR_BIN, else one
// built from this checkout into a temporary directory that cleanup removes. For TestMain.
func BuildMeshdoctor() (path string, cleanup func(), err error) {
	if path := os.Getenv(MeshdoctorEnv); path != "" {
		return path, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "meshdoctor-bin-")
	if err != nil {
		return "", nil, fmt.Errorf("building meshdoctor: %w", err)
	}
	path = filepath.Join(dir, "meshdoctor")
	// As `make build` does: static, so the image (deploy/image, no libc) can carry it.
	build := exec.Command("go", "build", "-trimpath", "-o", path, "github.com/meshdoctor/meshdoctor/cmd/meshdoctor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("building meshdoctor: %w\n%s", err, out)
	}
	return path, func() { os.RemoveAll(dir) }, nil
}
