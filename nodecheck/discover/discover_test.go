package discover

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

const status = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"default"}`
const nativeStatus = `{"initContainers":["istio-init","istio-proxy"],"containers":[],"revision":"default"}`

func at(s int) time.Time { return time.Date(2026, 11, 24, 9, 0, s, 0, time.UTC) }

func TestTarget(t *testing.T) {
	root := t.TempDir()
	netns := "/var/run/netns/cni-1"
	if err := os.MkdirAll(filepath.Join(root, "var/run/netns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, netns), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "proc/42/ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "proc/42/ns/net"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	proxy := nodecheck.Container{Name: "istio-proxy", UID: 1337, GID: 1337, CreatedAt: at(3)}
	cases := []struct {
		name      string
		sandbox   Sandbox
		skip      bool
		netns     string
		roles     map[string]nodecheck.ContainerRole
		cniMode   bool
		proxyUser *nodecheck.User
		initArgs  []string // istio-init's argv, kept
		problem   bool
		starting  bool // capture not judged yet: istio-init has not run
	}{
		{
			name: "sidecar pod",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status},
				Containers: []nodecheck.Container{
					{Name: "istio-init", CreatedAt: at(1), Args: []string{"/usr/local/bin/pilot-agent", "istio-iptables", "-p", "15001"},
						Env: []string{"ISTIO_DUAL_STACK=true"}},
					proxy,
					{Name: "app", CreatedAt: at(4), Args: []string{"app"}, Env: []string{"DB_PASSWORD=secret"}},
				}},
			netns:     filepath.Join(root, netns),
			roles:     map[string]nodecheck.ContainerRole{"istio-init": nodecheck.RoleInit, "istio-proxy": nodecheck.RoleSidecar, "app": nodecheck.RoleApp},
			proxyUser: &nodecheck.User{UID: 1337, GID: 1337},
			initArgs:  []string{"/usr/local/bin/pilot-agent", "istio-iptables", "-p", "15001"},
		},
		{
			name: "native sidecar, other init container named by the injector",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: nativeStatus},
				Containers: []nodecheck.Container{{Name: "istio-init"}, {Name: "istio-proxy", UID: 1337, GID: 1337}}},
			netns:     filepath.Join(root, netns),
			roles:     map[string]nodecheck.ContainerRole{"istio-init": nodecheck.RoleInit, "istio-proxy": nodecheck.RoleSidecar},
			proxyUser: &nodecheck.User{UID: 1337, GID: 1337},
		},
		{
			name: "CNI mode",
			sandbox: Sandbox{NetnsPath: netns, Containers: []nodecheck.Container{{Name: "istio-validation"},
				{Name: "istio-proxy", UID: 1500, GID: -1}}},
			netns:     filepath.Join(root, netns),
			roles:     map[string]nodecheck.ContainerRole{"istio-validation": nodecheck.RoleInit},
			cniMode:   true,
			proxyUser: &nodecheck.User{UID: 1500, GID: -1},
		},
		{
			name: "starting: istio-init running, its first attempt",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status},
				Containers: []nodecheck.Container{{Name: "istio-init", State: nodecheck.ContainerRunning, StartedAt: at(1)}}},
			netns: filepath.Join(root, netns), starting: true,
		},
		{
			name:    "starting: sandbox made, no container yet",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status}},
			netns:   filepath.Join(root, netns), starting: true,
		},
		{
			name: "not starting: istio-init restarted (a failure to judge)",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status},
				Containers: []nodecheck.Container{{Name: "istio-init", State: nodecheck.ContainerRunning, Attempt: 2, StartedAt: at(5)}}},
			netns: filepath.Join(root, netns),
		},
		{
			name: "not starting: istio-init exited",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status},
				Containers: []nodecheck.Container{{Name: "istio-init", State: nodecheck.ContainerExited, StartedAt: at(1)}}},
			netns: filepath.Join(root, netns),
		},
		{
			name: "not starting: istio-init's record gone, the app runs",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status},
				Containers: []nodecheck.Container{{Name: "app", State: nodecheck.ContainerRunning, StartedAt: at(4)}}},
			netns: filepath.Join(root, netns),
		},
		{
			name:    "plain pod is skipped",
			sandbox: Sandbox{NetnsPath: netns, Containers: []nodecheck.Container{{Name: "app"}}},
			skip:    true, netns: filepath.Join(root, netns),
		},
		{
			name:    "host network is skipped, even injected",
			sandbox: Sandbox{HostNetwork: true, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status}},
			skip:    true,
		},
		{
			name:    "ambient by label",
			sandbox: Sandbox{NetnsPath: netns, Labels: map[string]string{istiopod.LabelDataplaneMode: "ambient"}},
			netns:   filepath.Join(root, netns),
		},
		{
			name: "ambient label none wins over the annotation",
			sandbox: Sandbox{NetnsPath: netns, Labels: map[string]string{istiopod.LabelDataplaneMode: "none"},
				Annotations: map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}},
			skip: true, netns: filepath.Join(root, netns),
		},
		{
			name:    "netns path gone: /proc/PID/ns/net",
			sandbox: Sandbox{NetnsPath: "/var/run/netns/cni-gone", Pid: 42, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status}},
			netns:   filepath.Join(root, "proc/42/ns/net"),
		},
		{
			name:    "netns path and process gone: the reported path, to say it is gone",
			sandbox: Sandbox{NetnsPath: "/var/run/netns/cni-gone", Pid: 43, Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status}},
			netns:   filepath.Join(root, "/var/run/netns/cni-gone"),
		},
		{
			name:    "no netns at all",
			sandbox: Sandbox{Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status}},
			problem: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tg := Target(c.sandbox, root)
			if (tg.SkipReason != "") != c.skip {
				t.Errorf("skip reason %q, want skipped=%v", tg.SkipReason, c.skip)
			}
			if tg.Netns != c.netns {
				t.Errorf("netns %q, want %q", tg.Netns, c.netns)
			}
			for name, role := range c.roles {
				if ct := tg.Container(name); ct == nil || ct.Role != role {
					t.Errorf("%s: %+v, want role %s", name, ct, role)
				}
			}
			if tg.CNIMode != c.cniMode {
				t.Errorf("CNI mode %v, want %v", tg.CNIMode, c.cniMode)
			}
			if !reflect.DeepEqual(tg.ProxyUser, c.proxyUser) {
				t.Errorf("proxy user %+v, want %+v", tg.ProxyUser, c.proxyUser)
			}
			for k := range tg.Annotations {
				if strings.HasPrefix(k, "meshdoctor.io/") {
					t.Errorf("discovery invented annotation %s", k)
				}
			}
			for _, ct := range tg.Containers {
				want := []string(nil)
				if ct.Name == "istio-init" {
					want = c.initArgs
				}
				if !slices.Equal(ct.Args, want) {
					t.Errorf("%s: args %q, want %q", ct.Name, ct.Args, want)
				}
				if ct.Name == "app" && ct.Env != nil {
					t.Errorf("app's environment kept: %q", ct.Env)
				}
			}
			if c.netns != "" && !strings.Contains(c.name, "gone") && (tg.StartingUp != "") != c.starting {
				t.Errorf("starting up %q, want %v", tg.StartingUp, c.starting)
			}
			if (tg.DiscoveryError != "") != c.problem {
				t.Errorf("discovery error %q, want problem=%v", tg.DiscoveryError, c.problem)
			}
		})
	}
}

// The runtime's IPs of a pod, primary first: what ambient's probe set is judged against.
func TestTargetIPs(t *testing.T) {
	cases := []struct {
		name       string
		ip         string
		additional []string
		want       []string
	}{
		{name: "none (a sandbox without network yet)"},
		{name: "single stack", ip: "10.244.0.7", want: []string{"10.244.0.7"}},
		{name: "dual stack", ip: "10.244.0.7", additional: []string{"fd00:10:244::7"}, want: []string{"10.244.0.7", "fd00:10:244::7"}},
		{name: "empty entries dropped", ip: "", additional: []string{"", " fd00:10:244::7 "}, want: []string{"fd00:10:244::7"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Target(Sandbox{IP: c.ip, AdditionalIPs: c.additional, HostNetwork: true}, "/").IPs
			if !slices.Equal(got, c.want) {
				t.Errorf("IPs %q, want %q", got, c.want)
			}
		})
	}
}

func TestLatestAttempts(t *testing.T) {
	got := LatestAttempts([]nodecheck.Container{
		{Name: "istio-init", Attempt: 0, CreatedAt: at(1), ExitCode: 1},
		{Name: "app", CreatedAt: at(9)},
		{Name: "istio-init", Attempt: 1, CreatedAt: at(5), ExitCode: 1},
	})
	if len(got) != 2 || got[0].Name != "istio-init" || got[0].Attempt != 1 || got[1].Name != "app" {
		t.Errorf("got %+v", got)
	}
}

func TestSpec(t *testing.T) {
	spec, err := ParseSpec([]byte(`{"process":{"user":{"uid":1337,"gid":1337},"capabilities":{"bounding":["CAP_NET_ADMIN"],
		"effective":["CAP_NET_ADMIN","CAP_NET_RAW"]}},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	c := nodecheck.Container{UID: -1, GID: -1}
	spec.ApplyTo(&c)
	if c.UID != 1337 || c.GID != 1337 || len(c.Capabilities) != 2 {
		t.Errorf("container %+v", c)
	}
	if p, own := spec.NetworkNamespace(); !own || p != "/var/run/netns/cni-1" {
		t.Errorf("netns %q %v", p, own)
	}
	host, _ := ParseSpec([]byte(`{"process":{"user":{"uid":0}},"linux":{"namespaces":[{"type":"pid"}]}}`))
	if _, own := host.NetworkNamespace(); own {
		t.Error("a spec without a network namespace is host network")
	}
	c = nodecheck.Container{}
	host.ApplyTo(&c)
	if c.Capabilities == nil || len(c.Capabilities) != 0 {
		t.Errorf("no capabilities in the spec must read as none, not unknown: %#v", c.Capabilities)
	}
}

// The pod's cgroup is the sandbox's parent when kubelet named it after the pod (cgroupfs and
// systemd drivers), else the sandbox process's own.
func TestPodCgroup(t *testing.T) {
	const uid = "5f1b0f41-33ba-3c4c-b1e7-41965563f85d"
	for _, tc := range []struct{ dir, uid, want string }{
		{"/sys/fs/cgroup/kubepods/burstable/pod" + uid + "/abc", uid, "/sys/fs/cgroup/kubepods/burstable/pod" + uid},
		{"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f1b0f41_33ba_3c4c_b1e7_41965563f85d.slice/cri-containerd-abc.scope", uid,
			"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f1b0f41_33ba_3c4c_b1e7_41965563f85d.slice"},
		{"/sys/fs/cgroup/system.slice/containerd.service", uid, "/sys/fs/cgroup/system.slice/containerd.service"},
		{"/sys/fs/cgroup/kubepods/pod" + uid + "/abc", "", "/sys/fs/cgroup/kubepods/pod" + uid + "/abc"},
	} {
		if got := PodCgroup(tc.dir, tc.uid); got != tc.want {
			t.Errorf("PodCgroup(%s, %q) = %s, want %s", tc.dir, tc.uid, got, tc.want)
		}
	}
}

// A sandbox without a process has no cgroup, and says so.
func TestCgroupsNoProcess(t *testing.T) {
	var tg nodecheck.Target
	NewCgroups("/").Assign(&tg, 0)
	if tg.Cgroup != "" || tg.CgroupError == "" {
		t.Errorf("Cgroup %q, CgroupError %q", tg.Cgroup, tg.CgroupError)
	}
}

// What istio-cni's exclude_namespaces does to the pods of an excluded namespace: an ambient pod
// only its label enrols is skipped with the reason; a CNI-mode sidecar pod keeps the reason for
// its missing rules; an istio-init pod, an enrolled ambient pod, a pod elsewhere are left alone.
func TestApplyCNIExclusions(t *testing.T) {
	ambientLabel := map[string]string{istiopod.LabelDataplaneMode: "ambient"}
	cases := []struct {
		name                string
		t                   nodecheck.Target
		wantSkip, wantCNIEx bool
	}{
		{name: "ambient by label", t: nodecheck.Target{Namespace: "kube-system", Labels: ambientLabel}, wantSkip: true},
		{name: "ambient, enrolled by istio-cni", t: nodecheck.Target{Namespace: "kube-system", Labels: ambientLabel,
			Annotations: map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}}},
		{name: "sidecar in CNI mode", t: nodecheck.Target{Namespace: "kube-system", CNIMode: true,
			Annotations: map[string]string{istiopod.AnnotationSidecarStatus: "{}"}}, wantCNIEx: true},
		{name: "sidecar with istio-init", t: nodecheck.Target{Namespace: "kube-system", Annotations: map[string]string{istiopod.AnnotationSidecarStatus: "{}"}}},
		{name: "ambient by label elsewhere", t: nodecheck.Target{Namespace: "shop", Labels: ambientLabel}},
		{name: "already skipped", t: nodecheck.Target{Namespace: "kube-system", Labels: ambientLabel, SkipReason: "host network"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := []nodecheck.Target{c.t}
			ApplyCNIExclusions(ts, []string{"kube-system", "istio-system"}, "/etc/cni/net.d/10-calico.conflist")
			got := ts[0]
			skipped := got.SkipReason != c.t.SkipReason
			if skipped != c.wantSkip || (got.CNIExcluded != "") != c.wantCNIEx {
				t.Fatalf("skip %q, CNIExcluded %q; want skipped %v, excluded %v", got.SkipReason, got.CNIExcluded, c.wantSkip, c.wantCNIEx)
			}
			for _, why := range []string{got.CNIExcluded, strings.TrimPrefix(got.SkipReason, c.t.SkipReason)} {
				if why != "" && !strings.Contains(why, "kube-system") || why != "" && !strings.Contains(why, "10-calico.conflist") {
					t.Errorf("the reason names neither the namespace nor the file: %q", why)
				}
			}
		})
	}
}

// On a multus node, a CNI-mode pod whose annotation does not attach istio-cni is marked, with the
// annotation's value; one that attaches it, and pods not in CNI mode, are not.
func TestApplyMultusAttachment(t *testing.T) {
	attaches := func(v string) (bool, error) {
		if v == "[" {
			return false, errors.New("bad")
		}
		return strings.Contains(v, "istio-cni"), nil
	}
	cases := []struct {
		name, annotation, want string
		cniMode                bool
	}{
		{name: "attached", annotation: "default/istio-cni", cniMode: true},
		{name: "no annotation", cniMode: true, want: "has no k8s.v1.cni.cncf.io/networks annotation"},
		{name: "another network", annotation: "macvlan-conf", cniMode: true, want: `"macvlan-conf" does not name istio-cni`},
		{name: "junk", annotation: "[", cniMode: true, want: "does not parse"},
		{name: "istio-init pod"},
	}
	for _, c := range cases {
		ts := []nodecheck.Target{{Namespace: "shop", CNIMode: c.cniMode, Annotations: map[string]string{}}}
		if c.annotation != "" {
			ts[0].Annotations[AnnotationMultusNetworks] = c.annotation
		}
		ApplyMultusAttachment(ts, "/etc/cni/net.d/00-multus.conf", attaches)
		if got := ts[0].CNINotInChain; (got == "") != (c.want == "") || !strings.Contains(got, c.want) || c.want != "" && !strings.Contains(got, "00-multus.conf") {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
