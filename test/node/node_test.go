// Package node_test runs the real meshdoctor binary over a whole test node: a real containerd
// (Debian's 1.6, 1.7 and 2.x built from source) with its CRI plugin, real pod sandboxes created
// through CRI with the labels and annotations kubelet sets, a real istio-init (Istio's pilot-agent
// in an image built on the test machine) that succeeds, fails without NET_ADMIN, or validates and
// exits 126, and ambient pods enrolled by Istio's own istio-cni code. `meshdoctor check` without
// --netns must discover every pod, through the containerd client and through CRI, and say the
// right verdict and root cause for each.
package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// binary is the meshdoctor under test: $MESHDOCTOR_BIN (make test sets it), else built here.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	path, cleanup, err := testbed.BuildMeshdoctor()
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(2)
	}
	binary = path
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// check runs `meshdoctor check -o json` with args and returns the report, the exit code and stderr.
func check(t testing.TB, ctx context.Context, args ...string) (nodecheck.Report, int, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, append([]string{"check", "-o", "json"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("running meshdoctor: %v", err)
	}
	var rep nodecheck.Report
	if code != 2 {
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			t.Fatalf("report is not JSON (%v):\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
	}
	return rep, code, stderr.String()
}

// TestCheckDiscoversTheNode runs every scenario pod on each daemon and checks the report through
// the containerd client and through CRI: both paths must say the same.
func TestCheckDiscoversTheNode(t *testing.T) {
	for _, d := range testbed.ContainerdFlavors() {
		t.Run(d.Name, func(t *testing.T) {
			t.Parallel()
			n := kubelet.Start(t, d.Options(t)...)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			scs := scenarios()
			runScenarios(t, ctx, n, scs)
			paths := map[string][]string{
				"containerd client": {"--containerd-address", n.Containerd.Address, "--node-netns", n.Containerd.Netns.Path()},
				"CRI":               {"--cri-endpoint", "unix://" + n.Containerd.Address, "--node-netns", n.Containerd.Netns.Path()},
			}
			for _, path := range []string{"containerd client", "CRI"} {
				rep, code, stderr := check(t, ctx, paths[path]...)
				if code != 1 {
					t.Errorf("%s: exit %d, want 1 (broken pods); stderr:\n%s", path, code, stderr)
				}
				assertReport(t, path, rep, scs)
			}
		})
	}
}

// TestCheckNativeNftablesNode runs ambient pods on a node whose istio-cni runs in native nftables
// mode, both its sides written by Istio's own code: the pod the node's nft probe set holds is OK,
// the one it lost is AmbientProbeSetMissingPod.
func TestCheckNativeNftablesNode(t *testing.T) {
	d := testbed.ContainerdFlavors()[0]
	n := kubelet.Start(t, d.Options(t)...)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	scs := nativeAmbientScenarios()
	runScenarios(t, ctx, n, scs, "--native-nftables")
	rep, code, stderr := check(t, ctx, "--containerd-address", n.Containerd.Address, "--node-netns", n.Containerd.Netns.Path())
	if code != 1 {
		t.Errorf("exit %d, want 1 (a broken pod); stderr:\n%s", code, stderr)
	}
	assertReport(t, d.Name, rep, scs)
}

func assertReport(t *testing.T, path string, rep nodecheck.Report, scs []scenario) {
	t.Helper()
	byName := map[string]nodecheck.PodReport{}
	for _, p := range rep.Pods {
		byName[p.Namespace+"/"+p.Name] = p
	}
	if len(rep.Pods) != len(scs) {
		t.Errorf("%s: %d pods in the report, want %d", path, len(rep.Pods), len(scs))
	}
	for _, s := range scs {
		id := s.pod.Namespace + "/" + s.pod.Name
		p, ok := byName[id]
		if !ok {
			t.Errorf("%s: pod %s not discovered", path, id)
			continue
		}
		// The scenario's codes must all be there; other checks (proxy readiness, start order) may
		// add warnings of their own, but no other error.
		var codes, errs []nodecheck.Code
		for _, f := range p.Findings {
			codes = append(codes, f.Code)
			if f.Severity == nodecheck.SeverityError {
				errs = append(errs, f.Code)
			}
			if s.cni && (f.Code == nodecheck.RedirectRulesMissing || f.Code == nodecheck.InitContainerFailed) &&
				f.Component != nodecheck.ComponentIstioCNI {
				t.Errorf("%s: %s: %s does not point at istio-cni", path, id, f.Code)
			}
		}
		missing := false
		for _, c := range s.codes {
			missing = missing || !slices.Contains(codes, c)
		}
		for _, c := range errs {
			missing = missing || !slices.Contains(s.codes, c)
		}
		want := slices.Clone(s.codes)
		if p.Verdict != s.verdict || p.Capture.Mode != s.mode || missing {
			js, _ := json.MarshalIndent(p, "", "  ")
			t.Errorf("%s: %s: verdict %s mode %s codes %v; want %s %s %v\n%s", path, id, p.Verdict, p.Capture.Mode,
				codes, s.verdict, s.mode, want, js)
		}
		if p.UID != s.pod.UID && s.pod.UID != "" {
			t.Errorf("%s: %s: uid %q", path, id, p.UID)
		}
		if s.verdict != nodecheck.VerdictSkipped && !strings.HasPrefix(p.Netns, "/var/run/netns/cni-") {
			t.Errorf("%s: %s: netns %q", path, id, p.Netns)
		}
	}
}
