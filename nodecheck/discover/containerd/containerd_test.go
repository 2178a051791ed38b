package containerd_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf/cgroupbpftest"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/nodecheck/socketlb"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

const status = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"default"}`

func istioInit(caps ...string) kubelet.Container {
	return kubelet.Container{Name: "istio-init", Args: append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
		RunAsUser: kubelet.Int64(0), RunAsGroup: kubelet.Int64(0), CapAdd: caps, CapDrop: []string{"ALL"}}
}

func sleeper(name string, uid int64) kubelet.Container {
	return kubelet.Container{Name: name, Command: []string{"sleep", "3600"}, RunAsUser: kubelet.Int64(uid), RunAsGroup: kubelet.Int64(uid)}
}

func injected(name string, caps ...string) kubelet.Pod {
	return kubelet.Pod{Namespace: "shop", Name: name,
		Labels:         map[string]string{"app": name},
		Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: status},
		InitContainers: []kubelet.Container{istioInit(caps...)},
		Containers:     []kubelet.Container{sleeper("istio-proxy", 1337), sleeper("app", 1000)}}
}

// Everything discovery reports of real sandboxes, on containerd 1.6 and 2.x: identity, IP,
// netns, annotations, host network, and per container its role, state, exit code, times and the
// effective capabilities the runtime gave it. Stopped sandboxes are not pods any more.
func TestDiscoverRealSandboxes(t *testing.T) {
	for _, d := range testbed.ContainerdFlavors("containerd-1.6-debian", "containerd-2") {
		t.Run(d.Name, func(t *testing.T) {
			t.Parallel()
			n := kubelet.Start(t, d.Options(t)...)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			ok, err := n.RunPod(ctx, injected("ok", "NET_ADMIN", "NET_RAW"))
			if err != nil {
				t.Fatal(err)
			}
			bad, err := n.RunPod(ctx, injected("no-net-admin", "NET_RAW"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := n.RunPod(ctx, kubelet.Pod{Namespace: "kube-system", Name: "hostnet", HostNetwork: true,
				Containers: []kubelet.Container{sleeper("app", 0)}}); err != nil {
				t.Fatal(err)
			}
			stopped, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "stopped", Containers: []kubelet.Container{sleeper("app", 0)}})
			if err != nil {
				t.Fatal(err)
			}
			if err := n.StopPod(ctx, stopped); err != nil {
				t.Fatal(err)
			}

			rt, err := containerd.New(n.Containerd.Address, "/")
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Close()
			targets, err := rt.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			byName := map[string]nodecheck.Target{}
			for _, tg := range targets {
				names = append(names, tg.Namespace+"/"+tg.Name)
				byName[tg.Name] = tg
				if tg.DiscoveryError != "" {
					t.Errorf("%s: %s", tg.Name, tg.DiscoveryError)
				}
			}
			if want := []string{"kube-system/hostnet", "shop/no-net-admin", "shop/ok"}; !slices.Equal(names, want) {
				t.Fatalf("discovered %v, want %v (sorted, stopped sandbox left out)", names, want)
			}

			got := byName["ok"]
			if got.UID != ok.UID || got.SandboxID != ok.SandboxID || got.IP != ok.IP || got.Netns != ok.Netns ||
				got.Labels["app"] != "ok" || got.Annotations[istiopod.AnnotationSidecarStatus] != status || got.SkipReason != "" {
				t.Errorf("pod ok: %+v\nwant uid %s sandbox %s ip %s netns %s", got, ok.UID, ok.SandboxID, ok.IP, ok.Netns)
			}
			if !slices.Equal(got.IPs, []string{ok.IP}) {
				t.Errorf("pod ok: IPs %v, want [%s] (a single-stack pod)", got.IPs, ok.IP)
			}
			if u := got.ProxyUser; u == nil || u.UID != 1337 {
				t.Errorf("proxy user %+v", u)
			}
			init := got.Container("istio-init")
			if init == nil || init.Role != nodecheck.RoleInit || init.State != nodecheck.ContainerExited || init.ExitCode != 0 ||
				init.StartedAt.IsZero() || init.FinishedAt.Before(init.StartedAt) || init.UID != 0 ||
				!slices.Equal(init.Capabilities, []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}) || init.ID != ok.ContainerIDs["istio-init"] {
				t.Errorf("istio-init: %+v", init)
			}
			for _, c := range []struct {
				name string
				role nodecheck.ContainerRole
				uid  int64
			}{{"istio-proxy", nodecheck.RoleSidecar, 1337}, {"app", nodecheck.RoleApp, 1000}} {
				ct := got.Container(c.name)
				if ct == nil || ct.Role != c.role || ct.State != nodecheck.ContainerRunning || ct.UID != c.uid || ct.StartedAt.IsZero() {
					t.Errorf("%s: %+v", c.name, ct)
				}
			}

			badInit := byName["no-net-admin"].Container("istio-init")
			if badInit == nil || badInit.State != nodecheck.ContainerExited || badInit.ExitCode == 0 ||
				!slices.Equal(badInit.Capabilities, []string{"CAP_NET_RAW"}) {
				t.Errorf("istio-init without NET_ADMIN: %+v", badInit)
			}
			if bad.ExitCodes["istio-init"] != badInit.ExitCode {
				t.Errorf("exit code %d, kubelet saw %d", badInit.ExitCode, bad.ExitCodes["istio-init"])
			}
			if h := byName["hostnet"]; !h.HostNetwork || h.SkipReason == "" || h.Netns != "" {
				t.Errorf("hostnet: %+v", h)
			}
			t.Run("cgroup", func(t *testing.T) { checkPodCgroup(t, ctx, ok, got) })
		})
	}
}

// A pod deleted between discovery and its check: its netns is gone, its verdict is unknown with
// the reason, and the other pods are still checked.
func TestVanishedNetns(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var pods []*kubelet.RunningPod
	for _, name := range []string{"a", "b"} {
		p, err := n.RunPod(ctx, injected(name, "NET_ADMIN", "NET_RAW"))
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	rt, err := containerd.New(n.Containerd.Address, "/")
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	targets, err := rt.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.RemovePod(ctx, pods[0]); err != nil {
		t.Fatal(err)
	}
	r := diagnose.Runner{Checks: []nodecheck.Check{&capture.Check{Reader: nsread.Reader{}}}}
	out := r.Run(ctx, targets)
	if out[0].Pod.Verdict != nodecheck.VerdictUnknown || !strings.Contains(out[0].Pod.Reason, "disappeared") {
		t.Errorf("removed pod: %s %q", out[0].Pod.Verdict, out[0].Pod.Reason)
	}
	if out[1].Pod.Verdict != nodecheck.VerdictOK {
		t.Errorf("other pod: %s %q %+v", out[1].Pod.Verdict, out[1].Pod.Reason, out[1].Pod.Findings)
	}
}

// A runtime that is down is said at once, whether its socket is missing or nobody listens.
func TestSocketDown(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	missing, err := containerd.New(n.Containerd.Dir+"/nothing.sock", "/")
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if _, err := missing.Discover(ctx); err == nil || !strings.Contains(err.Error(), "no containerd socket") {
		t.Errorf("missing socket: %v", err)
	}
	rt, err := containerd.New(n.Containerd.Address, "/")
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if err := n.Containerd.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = rt.Discover(ctx)
	if err == nil || !strings.Contains(err.Error(), n.Containerd.Address) {
		t.Errorf("killed daemon: %v", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("took %s to say the daemon is down", d)
	}
}

// checkPodCgroup: discovery found the pod's cgroup v2 directory from its sandbox process: the
// pod-level cgroup kubelet names after the pod's UID, a real cgroup2 directory holding the pod's
// processes (one of them in the pod's network namespace). On a node without cgroup v2 the field
// stays empty and CgroupError says why.
func checkPodCgroup(t *testing.T, ctx context.Context, pod *kubelet.RunningPod, tg nodecheck.Target) {
	mounts, err := cgroupbpf.SelfMounts()
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) == 0 {
		if tg.Cgroup != "" || tg.CgroupError == "" {
			t.Errorf("no cgroup2 mount: Cgroup %q, CgroupError %q", tg.Cgroup, tg.CgroupError)
		}
		testbed.SkipOrFatal(t, "no cgroup v2 hierarchy on this machine: %s", tg.CgroupError)
	}
	if tg.Cgroup == "" {
		t.Fatalf("no cgroup: %s", tg.CgroupError)
	}
	t.Logf("pod cgroup %s", tg.Cgroup)
	var st unix.Statfs_t
	if err := unix.Statfs(tg.Cgroup, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("%s: statfs %v, magic %#x: not a cgroup2 directory", tg.Cgroup, err, st.Type)
	}
	if want := "pod" + pod.UID; filepath.Base(tg.Cgroup) != want {
		t.Errorf("cgroup %s: want kubelet's pod-level cgroup %s", tg.Cgroup, want)
	}
	// The pod's processes are in it or below it, and one of them is in the pod's netns.
	netns, err := os.Stat(pod.Netns)
	if err != nil {
		t.Fatal(err)
	}
	var inPod bool
	var pids []string
	err = filepath.WalkDir(tg.Cgroup, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.Name() != "cgroup.procs" {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, pid := range strings.Fields(string(data)) {
			pids = append(pids, pid)
			if ns, err := os.Stat("/proc/" + pid + "/ns/net"); err == nil && os.SameFile(ns, netns) {
				inPod = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !inPod {
		t.Errorf("no process of %s (%v) is in the pod's netns %s", tg.Cgroup, pids, pod.Netns)
	}

	// A socket load balancer's connect program on the test node's cgroup (above every pod
	// of this test node only) is seen on the pod's.
	lb := cgroupbpftest.AttachSockAddr(t, filepath.Dir(tg.Cgroup), cgroupbpf.Inet4Connect, "md_test_lb")
	res, err := socketlb.Check{}.Check(ctx, tg)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, f := range res.Findings {
		for _, p := range f.Evidence["programs"].([]cgroupbpf.Program) {
			found = found || (p.ID == lb.ID && f.Code == nodecheck.SocketLBBeforeCapture)
		}
	}
	if !found {
		t.Errorf("socket-lb on the discovered pod: %+v, want SocketLBBeforeCapture naming program %d", res, lb.ID)
	}
}
