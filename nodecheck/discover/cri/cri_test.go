package cri_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/cri"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

const status = `{"initContainers":["istio-validation"],"containers":["istio-proxy"],"revision":"default"}`

func pods() []kubelet.Pod {
	sleeper := func(name string, uid int64) kubelet.Container {
		return kubelet.Container{Name: name, Command: []string{"sleep", "3600"}, RunAsUser: kubelet.Int64(uid), RunAsGroup: kubelet.Int64(uid)}
	}
	return []kubelet.Pod{
		{Namespace: "shop", Name: "cni-mode", Annotations: map[string]string{istiopod.AnnotationSidecarStatus: status},
			InitContainers: []kubelet.Container{{Name: "istio-validation", Command: []string{"sh", "-c", "exit 126"},
				RunAsUser: kubelet.Int64(1337), CapDrop: []string{"ALL"}}},
			Containers: []kubelet.Container{sleeper("istio-proxy", 1337), sleeper("app", 1000)}},
		{Namespace: "mesh", Name: "ambient", Labels: map[string]string{istiopod.LabelDataplaneMode: "ambient"},
			Containers: []kubelet.Container{sleeper("app", 0)}},
		{Namespace: "kube-system", Name: "hostnet", HostNetwork: true, Containers: []kubelet.Container{sleeper("app", 0)}},
	}
}

// The CRI path must describe the node exactly as the containerd client path does (tested on
// containerd's own CRI endpoint): same pods, same fields, same containers.
func TestCRIAgreesWithContainerd(t *testing.T) {
	for _, d := range testbed.ContainerdFlavors("containerd-1.6-debian", "containerd-2") {
		t.Run(d.Name, func(t *testing.T) {
			t.Parallel()
			n := kubelet.Start(t, d.Options(t)...)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			for _, p := range pods() {
				if _, err := n.RunPod(ctx, p); err != nil {
					t.Fatal(err)
				}
			}
			viaCRI, err := cri.New("unix://"+n.Containerd.Address, "/")
			if err != nil {
				t.Fatal(err)
			}
			defer viaCRI.Close()
			viaContainerd, err := containerd.New(n.Containerd.Address, "/")
			if err != nil {
				t.Fatal(err)
			}
			defer viaContainerd.Close()
			a, err := viaCRI.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			b, err := viaContainerd.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ja, _ := json.MarshalIndent(a, "", "  ")
			jb, _ := json.MarshalIndent(b, "", "  ")
			if string(ja) != string(jb) {
				t.Errorf("CRI:\n%s\ncontainerd:\n%s", ja, jb)
			}
			if len(a) != 3 {
				t.Fatalf("%d pods", len(a))
			}
			v := a[2].Container("istio-validation") // shop/cni-mode, sorted last
			if a[2].Name != "cni-mode" || v == nil || v.ExitCode != 126 || !a[2].CNIMode {
				t.Errorf("CNI-mode pod: %+v", a[2])
			}
		})
	}
}

// removingRuntime removes one pod through the real runtime right after the listing, as a pod
// deleted while meshdoctor reads the node.
type removingRuntime struct {
	runtimeapi.RuntimeServiceClient
	remove func(context.Context) error
}

func (r removingRuntime) ListPodSandbox(ctx context.Context, in *runtimeapi.ListPodSandboxRequest, opts ...grpc.CallOption) (*runtimeapi.ListPodSandboxResponse, error) {
	resp, err := r.RuntimeServiceClient.ListPodSandbox(ctx, in, opts...)
	if err == nil {
		err = r.remove(ctx)
	}
	return resp, err
}

// A sandbox removed during discovery: that pod is described as such, the others fully.
func TestSandboxRemovedDuringDiscovery(t *testing.T) {
	n := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var running []*kubelet.RunningPod
	for _, p := range pods()[:2] {
		rp, err := n.RunPod(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		running = append(running, rp)
	}
	rt := cri.NewWithClient("test", "/", removingRuntime{n.Runtime, func(ctx context.Context) error {
		return n.RemovePod(ctx, running[1]) // mesh/ambient
	}}, nil)
	targets, err := rt.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 2 {
		t.Fatalf("%d targets", len(targets))
	}
	gone, kept := targets[0], targets[1]
	if gone.Name != "ambient" || !strings.Contains(gone.DiscoveryError, "removed during discovery") {
		t.Errorf("removed pod: %+v", gone)
	}
	// Its istio-validation exited 126, so (as kubelet does) the pod's other containers never started.
	if kept.Name != "cni-mode" || kept.DiscoveryError != "" || len(kept.Containers) != 1 ||
		kept.Container("istio-validation").State != nodecheck.ContainerExited {
		t.Errorf("other pod: %+v", kept)
	}
}
