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

// TestNetnsInitArgs: --init-args and --init-env give a bare namespace the init container a
// discovered pod would have, so that its rules are judged against istio-init's command line.
func TestNetnsInitArgs(t *testing.T) {
	cases := []struct {
		name      string
		opts      netnsOptions
		container string
		argv      []string
		wantErr   string
	}{
		{name: "words", opts: netnsOptions{initArgs: "pilot-agent istio-iptables -p 15001 -u 1337", initEnv: []string{"ISTIO_DUAL_STACK=true"}},
			container: "istio-init", argv: []string{"pilot-agent", "istio-iptables", "-p", "15001", "-u", "1337"}},
		{name: "JSON keeps empty values", opts: netnsOptions{initArgs: `["istio-iptables","-x","","-b","*"]`},
			container: "istio-init", argv: []string{"istio-iptables", "-x", "", "-b", "*"}},
		{name: "bad JSON", opts: netnsOptions{initArgs: `["istio-iptables",`}, wantErr: "--init-args: not a JSON array"},
		{name: "not istio-iptables", opts: netnsOptions{initArgs: "sleep 3600"}, wantErr: "--init-args: reading istio-init's command line"},
		{name: "bad value", opts: netnsOptions{initArgs: "istio-iptables -m MAGIC"}, wantErr: "--init-args: istio-init: istio-iptables -m"},
		{name: "env without args", opts: netnsOptions{initEnv: []string{"A=1"}}, wantErr: "--init-env needs --init-args"},
		{name: "env not NAME=VALUE", opts: netnsOptions{initArgs: "istio-iptables", initEnv: []string{"ISTIO_DUAL_STACK"}}, wantErr: `--init-env "ISTIO_DUAL_STACK"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.opts.paths = []string{"/ns"}
			got, err := c.opts.targets()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			init := got[0].Container(c.container)
			if init == nil || !reflect.DeepEqual(init.Args, c.argv) || !reflect.DeepEqual(init.Env, c.opts.initEnv) {
				t.Fatalf("containers %+v", got[0].Containers)
			}
			if init.Role != nodecheck.RoleInit || init.State != nodecheck.ContainerUnknown || init.Capabilities != nil {
				t.Errorf("the init container claims what the runtime did not say: %+v", init)
			}
		})
	}
	// In CNI mode the command line is istio-validation's.
	path := filepath.Join(t.TempDir(), "pod.json")
	if err := os.WriteFile(path, []byte(`{"meshdoctor.io/cni-mode": "true"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := (&netnsOptions{paths: []string{"/ns"}, annotations: path, initArgs: "istio-iptables --run-validation --skip-rule-apply"}).targets()
	if err != nil || got[0].Container("istio-validation") == nil {
		t.Errorf("CNI mode: %v %+v", err, got)
	}
	if _, err := (&netnsOptions{initArgs: "istio-iptables"}).targets(); err == nil || !strings.Contains(err.Error(), "--init-args applies to --netns") {
		t.Errorf("--init-args without --netns: %v", err)
	}
}
