package kubelet_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// IstioInit is istio-init as Istio's injector writes it, with the test bed's image.
func istioInit() kubelet.Container {
	return kubelet.Container{
		Name:      "istio-init",
		Args:      append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...),
		RunAsUser: kubelet.Int64(0), RunAsGroup: kubelet.Int64(0),
		CapAdd: []string{"NET_ADMIN", "NET_RAW"}, CapDrop: []string{"ALL"},
	}
}

func TestSmoke(t *testing.T) {
	for _, d := range []struct {
		name string
		opts func(t *testing.T) []testbed.ContainerdOption
	}{
		{"debian", func(*testing.T) []testbed.ContainerdOption { return nil }},
		{"v2", func(t *testing.T) []testbed.ContainerdOption {
			return []testbed.ContainerdOption{testbed.WithContainerdBinary(testbed.Containerd2Binary(t))}
		}},
	} {
		t.Run(d.name, func(t *testing.T) {
			n := kubelet.Start(t, d.opts(t)...)
			t.Log(n.Containerd.Version)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			p, err := n.RunPod(ctx, kubelet.Pod{Namespace: "shop", Name: "cart", InitContainers: []kubelet.Container{istioInit()},
				Containers: []kubelet.Container{{Name: "app", Command: []string{"sleep", "3600"}}}})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("pod %s %s %v in %s", p.Netns, p.IP, p.ExitCodes, time.Since(start))
			out, _ := n.Containerd.Ctr(ctx, "containers", "info", p.SandboxID)
			os.WriteFile("/tmp/sandbox-info-"+d.name+".json", out, 0o644)
			out, _ = n.Containerd.Ctr(ctx, "containers", "info", p.ContainerIDs["istio-init"])
			os.WriteFile("/tmp/init-info-"+d.name+".json", out, 0o644)
			if !strings.HasPrefix(p.Netns, "/var/run/netns/cni-") {
				t.Errorf("netns %q", p.Netns)
			}
		})
	}
}
