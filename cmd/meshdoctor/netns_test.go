package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// TestNetnsTargets: the --annotations file's own keys become the target's typed facts and never
// reach its annotations; what Istio could not have been told is an error naming the file.
func TestNetnsTargets(t *testing.T) {
	cases := []struct {
		name    string
		file    string
		want    nodecheck.Target
		wantErr string
	}{
		{name: "pod annotations only", file: `{"sidecar.istio.io/interceptionMode": "TPROXY"}`,
			want: nodecheck.Target{Netns: "/ns", Annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}}},
		{name: "runtime facts", file: `{"meshdoctor.io/cni-mode": "true", "meshdoctor.io/proxy-uid": "1500", "traffic.sidecar.istio.io/excludeInboundPorts": "9000"}`,
			want: nodecheck.Target{Netns: "/ns", CNIMode: true, ProxyUser: &nodecheck.User{UID: 1500, GID: 1500},
				Annotations: map[string]string{"traffic.sidecar.istio.io/excludeInboundPorts": "9000"}}},
		{name: "proxy group", file: `{"meshdoctor.io/proxy-uid": "1500", "meshdoctor.io/proxy-gid": "1600"}`,
			want: nodecheck.Target{Netns: "/ns", ProxyUser: &nodecheck.User{UID: 1500, GID: 1600}, Annotations: map[string]string{}}},
		{name: "null", file: `null`, want: nodecheck.Target{Netns: "/ns", Annotations: map[string]string{}}},
		{name: "not an object", file: `["a"]`, wantErr: "must be a JSON object of strings"},
		{name: "bad cni mode", file: `{"meshdoctor.io/cni-mode": "maybe"}`, wantErr: "meshdoctor.io/cni-mode"},
		{name: "bad uid", file: `{"meshdoctor.io/proxy-uid": "-1"}`, wantErr: "meshdoctor.io/proxy-uid"},
		{name: "group without user", file: `{"meshdoctor.io/proxy-gid": "1"}`, wantErr: "without meshdoctor.io/proxy-uid"},
		{name: "bad pod annotation", file: `{"sidecar.istio.io/interceptionMode": "MAGIC"}`, wantErr: "sidecar.istio.io/interceptionMode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pod.json")
			if err := os.WriteFile(path, []byte(c.file), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := (&netnsOptions{paths: []string{"/ns"}, annotations: path}).targets()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %v, want one naming %s and %q", err, path, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || !reflect.DeepEqual(got[0], c.want) {
				t.Errorf("targets %+v, want [%+v]", got, c.want)
			}
		})
	}
	if _, err := (&netnsOptions{annotations: "pod.json"}).targets(); err == nil {
		t.Error("--annotations without --netns accepted")
	}
}
