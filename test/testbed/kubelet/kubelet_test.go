package kubelet_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

func natRules(t *testing.T, netns string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+netns, "iptables-nft-save", "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-nft-save in %s: %v\n%s", netns, err, out)
	}
	return string(out)
}

// A real istio-init, Istio's pilot-agent in the test bed's image, writes the pod's rules when it
// has NET_ADMIN and NET_RAW, and fails without NET_ADMIN; on Debian's containerd and on 2.x.
func TestIstioInitInARealPod(t *testing.T) {
	for _, d := range testbed.ContainerdFlavors("containerd-1.6-debian", "containerd-2") {
		t.Run(d.Name, func(t *testing.T) {
			t.Parallel()
			n := kubelet.Start(t, d.Options(t)...)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			ok, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "cart",
				InitContainers: []kubelet.Container{kubelet.IstioInit()},
				Containers:     []kubelet.Container{{Name: "app", Command: []string{"sleep", "3600"}}}})
			if err != nil {
				t.Fatal(err)
			}
			if ok.ExitCodes["istio-init"] != 0 {
				t.Fatalf("istio-init exited %d:\n%s", ok.ExitCodes["istio-init"], n.Logs(ok, "istio-init"))
			}
			if !strings.HasPrefix(ok.Netns, "/var/run/netns/cni-") || ok.IP == "" {
				t.Errorf("netns %q ip %q", ok.Netns, ok.IP)
			}
			if rules := natRules(t, ok.Netns); !strings.Contains(rules, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001") {
				t.Errorf("istio-init wrote no redirect:\n%s", rules)
			}
			failed, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "no-net-admin",
				InitContainers: []kubelet.Container{kubelet.IstioInit("NET_RAW")},
				Containers:     []kubelet.Container{{Name: "app", Command: []string{"sleep", "3600"}}}})
			if err != nil {
				t.Fatal(err)
			}
			if failed.ExitCodes["istio-init"] == 0 {
				t.Errorf("istio-init without NET_ADMIN succeeded:\n%s", n.Logs(failed, "istio-init"))
			}
			if _, started := failed.ContainerIDs["app"]; started {
				t.Error("the app container started after a failed init container")
			}
			host, err := n.RunPod(ctx, kubelet.Pod{Namespace: "kube-system", Name: "hostnet", HostNetwork: true,
				Containers: []kubelet.Container{{Name: "app", Command: []string{"sleep", "3600"}}}})
			if err != nil {
				t.Fatal(err)
			}
			if host.Netns != "" {
				t.Errorf("host-network pod has netns %q", host.Netns)
			}
		})
	}
}

// Restarting a container kills the running attempt and runs the next one in the same sandbox,
// as kubelet does after a crash.
func TestRestartContainer(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rp, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "cart", Containers: []kubelet.Container{kubelet.App()}})
	if err != nil {
		t.Fatal(err)
	}
	first := rp.ContainerIDs["app"]
	next, err := n.RestartContainer(ctx, rp, "app")
	if err != nil {
		t.Fatal(err)
	}
	if next == first || rp.ContainerIDs["app"] != next {
		t.Fatalf("restart gave id %s (first %s, recorded %s)", next, first, rp.ContainerIDs["app"])
	}
	status := func(id string) *runtimeapi.ContainerStatus {
		resp, err := n.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Status
	}
	if st := status(first); st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("first attempt %s, want exited", st.State)
	}
	if st := status(next); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.Metadata.Attempt != 1 {
		t.Errorf("next attempt %s, attempt %d; want running, attempt 1", st.State, st.Metadata.Attempt)
	}
	if _, err := n.RestartContainer(ctx, rp, "nope"); err == nil {
		t.Error("restarting a container the pod does not have succeeded")
	}
}

// Stopping a node removes everything its pods put on the host, also when the daemon was killed
// first and could not tear its pods down.
func TestStopLeavesNothing(t *testing.T) {
	for _, how := range []string{"clean stop", "daemon killed", "test process died"} {
		t.Run(how, func(t *testing.T) {
			testbed.RequirePrivileged(t)
			pilotAgent := testbed.PilotAgent(t)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			c, err := testbed.LaunchContainerd(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Stop()
			dir := t.TempDir()
			pause, err := testbed.BuildPauseImage(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			istio, err := testbed.BuildIstioImage(ctx, dir, pilotAgent)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range []string{pause, istio} {
				if err := c.ImportImage(ctx, a); err != nil {
					t.Fatal(err)
				}
			}
			parent := "/md-pods-stoptest-" + filepath.Base(c.Dir)
			defer testbed.RemoveCgroupTree(parent)
			n, err := kubelet.Connect(c, parent)
			if err != nil {
				t.Fatal(err)
			}
			p, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "cart",
				Containers: []kubelet.Container{{Name: "app", Command: []string{"sleep", "3600"}}}})
			if err != nil {
				t.Fatal(err)
			}
			switch how {
			case "daemon killed":
				if err := c.Kill(); err != nil {
					t.Fatal(err)
				}
			case "test process died":
				// As if the process that started the daemon had been killed: its owner record
				// names a dead process, and the next test bed sweeps the daemon away.
				dead := exec.Command("true")
				if err := dead.Run(); err != nil {
					t.Fatal(err)
				}
				owner := []byte(fmt.Sprintf(`{"pid":%d,"startTime":"1","binary":"/usr/bin/containerd","major":1,"netns":%q}`,
					dead.Process.Pid, c.Netns.Name))
				if err := os.WriteFile(filepath.Join(c.Dir, "owner.json"), owner, 0o600); err != nil {
					t.Fatal(err)
				}
				testbed.SweepAbandoned()
				if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
					t.Fatalf("the abandoned daemon's directory is still there (%v)", err)
				}
			}
			if err := c.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := testbed.RemoveCgroupTree(parent); err != nil {
				t.Error(err)
			}
			for _, path := range []string{p.Netns, c.Dir, filepath.Join("/sys/fs/cgroup/memory", parent),
				filepath.Join("/etc/netns", c.Netns.Name), c.Netns.Path()} {
				if _, err := os.Stat(path); !os.IsNotExist(err) {
					t.Errorf("%s left behind (%v)", path, err)
				}
			}
			if m, _ := filepath.Glob("/var/lib/cni/results/*" + p.SandboxID + "*"); len(m) > 0 {
				t.Errorf("CNI cache left behind: %v", m)
			}
		})
	}
}
