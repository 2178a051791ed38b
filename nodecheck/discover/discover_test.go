package discover

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
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
		name       string
		sandbox    Sandbox
		skip       bool
		netns      string
		roles      map[string]nodecheck.ContainerRole
		annotation map[string]string // must be set
		problem    bool
	}{
		{
			name: "sidecar pod",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{capture.AnnotationSidecarStatus: status},
				Containers: []nodecheck.Container{
					{Name: "istio-init", CreatedAt: at(1)}, proxy, {Name: "app", CreatedAt: at(4)},
				}},
			netns:      filepath.Join(root, netns),
			roles:      map[string]nodecheck.ContainerRole{"istio-init": nodecheck.RoleInit, "istio-proxy": nodecheck.RoleSidecar, "app": nodecheck.RoleApp},
			annotation: map[string]string{capture.AnnotationProxyUID: "1337", capture.AnnotationProxyGID: "1337"},
		},
		{
			name: "native sidecar, other init container named by the injector",
			sandbox: Sandbox{NetnsPath: netns, Annotations: map[string]string{capture.AnnotationSidecarStatus: nativeStatus},
				Containers: []nodecheck.Container{{Name: "istio-init"}, {Name: "istio-proxy", UID: 1337, GID: 1337}}},
			netns: filepath.Join(root, netns),
			roles: map[string]nodecheck.ContainerRole{"istio-init": nodecheck.RoleInit, "istio-proxy": nodecheck.RoleSidecar},
		},
		{
			name: "CNI mode",
			sandbox: Sandbox{NetnsPath: netns, Containers: []nodecheck.Container{{Name: "istio-validation"},
				{Name: "istio-proxy", UID: 1500, GID: -1}}},
			netns:      filepath.Join(root, netns),
			roles:      map[string]nodecheck.ContainerRole{"istio-validation": nodecheck.RoleInit},
			annotation: map[string]string{capture.AnnotationCNIMode: "true", capture.AnnotationProxyUID: "1500"},
		},
		{
			name:    "plain pod is skipped",
			sandbox: Sandbox{NetnsPath: netns, Containers: []nodecheck.Container{{Name: "app"}}},
			skip:    true, netns: filepath.Join(root, netns),
		},
		{
			name:    "host network is skipped, even injected",
			sandbox: Sandbox{HostNetwork: true, Annotations: map[string]string{capture.AnnotationSidecarStatus: status}},
			skip:    true,
		},
		{
			name:    "ambient by label",
			sandbox: Sandbox{NetnsPath: netns, Labels: map[string]string{capture.LabelDataplaneMode: "ambient"}},
			netns:   filepath.Join(root, netns),
		},
		{
			name: "ambient label none wins over the annotation",
			sandbox: Sandbox{NetnsPath: netns, Labels: map[string]string{capture.LabelDataplaneMode: "none"},
				Annotations: map[string]string{capture.AnnotationAmbientRedirection: "enabled"}},
			skip: true, netns: filepath.Join(root, netns),
		},
		{
			name:    "netns path gone: /proc/PID/ns/net",
			sandbox: Sandbox{NetnsPath: "/var/run/netns/cni-gone", Pid: 42, Annotations: map[string]string{capture.AnnotationSidecarStatus: status}},
			netns:   filepath.Join(root, "proc/42/ns/net"),
		},
		{
			name:    "netns path and process gone: the reported path, to say it is gone",
			sandbox: Sandbox{NetnsPath: "/var/run/netns/cni-gone", Pid: 43, Annotations: map[string]string{capture.AnnotationSidecarStatus: status}},
			netns:   filepath.Join(root, "/var/run/netns/cni-gone"),
		},
		{
			name:    "no netns at all",
			sandbox: Sandbox{Annotations: map[string]string{capture.AnnotationSidecarStatus: status}},
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
			for k, v := range c.annotation {
				if tg.Annotations[k] != v {
					t.Errorf("annotation %s = %q, want %q", k, tg.Annotations[k], v)
				}
			}
			if (tg.DiscoveryError != "") != c.problem {
				t.Errorf("discovery error %q, want problem=%v", tg.DiscoveryError, c.problem)
			}
			if len(c.sandbox.Annotations) > 0 && len(c.sandbox.Annotations) == len(tg.Annotations) && c.annotation != nil {
				t.Error("the sandbox's own annotations map was not copied")
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
