package istiocni

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
)

// Where the runtime reads CNI config, from containerd's own default configs (the output of
// `containerd config default` of 1.6, 1.7 and 2.2, format versions 2 and 3, under
// testdata/runtime) and from them with conf_dir changed as k3s sets it; CRI-O's shape is written
// by the cases (no CRI-O on the test bed).
func TestReadRuntimeCNI(t *testing.T) {
	k3s := "/var/lib/rancher/k3s/agent/etc/cni/net.d"
	withDir := func(file string) string {
		b, err := os.ReadFile(filepath.Join("testdata/runtime", file))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.Replace(string(b), `conf_dir = "/etc/cni/net.d"`, `conf_dir = "`+k3s+`"`, 1)
		return strings.Replace(s, `conf_dir = '/etc/cni/net.d'`, `conf_dir = '`+k3s+`'`, 1)
	}
	real := func(file string) string { return readTestdata(t, filepath.Join("testdata/runtime", file)) }
	cases := []struct {
		name    string
		files   map[string]string
		want    *RuntimeCNI
		wantErr string
	}{
		{name: "containerd 1.6 default", files: map[string]string{containerdConfig: real("containerd-1.6-default.toml")},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/" + containerdConfig, ConfDir: "/etc/cni/net.d", MaxConfNum: 1}},
		{name: "containerd 1.7 default", files: map[string]string{containerdConfig: real("containerd-1.7-default.toml")},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/" + containerdConfig, ConfDir: "/etc/cni/net.d", MaxConfNum: 1}},
		{name: "containerd 2.2 default (version 3)", files: map[string]string{containerdConfig: real("containerd-2.2-default.toml")},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/" + containerdConfig, ConfDir: "/etc/cni/net.d", MaxConfNum: 1}},
		{name: "containerd 1.7, k3s's directory", files: map[string]string{containerdConfig: withDir("containerd-1.7-default.toml")},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/" + containerdConfig, ConfDir: k3s, MaxConfNum: 1}},
		{name: "containerd 2.2, k3s's directory", files: map[string]string{containerdConfig: withDir("containerd-2.2-default.toml")},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/" + containerdConfig, ConfDir: k3s, MaxConfNum: 1}},
		{name: "containerd without a CRI section", files: map[string]string{containerdConfig: "version = 2\nroot = \"/var/lib/containerd\"\n"},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/" + containerdConfig, ConfDir: "/etc/cni/net.d", MaxConfNum: 1}},
		{name: "containerd 2.2 default, a drop-in sets the directory", files: map[string]string{containerdConfig: real("containerd-2.2-default.toml"),
			"etc/containerd/conf.d/10-cni.toml": "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  conf_dir = '" + k3s + "'\n"},
			want: &RuntimeCNI{Runtime: "containerd", ConfigFile: "/etc/containerd/conf.d/10-cni.toml", ConfDir: k3s, MaxConfNum: 1}},
		{name: "CRI-O, a drop-in sets the directory", files: map[string]string{crioConfig: "[crio.network]\nplugin_dirs = [\"/opt/cni/bin\"]\n",
			crioDropIns + "/10-net.conf": "[crio.network]\nnetwork_dir = \"/etc/kubernetes/cni/net.d\"\n"},
			want: &RuntimeCNI{Runtime: "cri-o", ConfigFile: "/" + crioDropIns + "/10-net.conf", ConfDir: "/etc/kubernetes/cni/net.d"}},
		{name: "no runtime config", files: map[string]string{}},
		{name: "containerd config that is not TOML", files: map[string]string{containerdConfig: "version = [\n"}, wantErr: "not TOML"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for p, content := range c.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadRuntimeCNI(root)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (c.want == nil) || got != nil && *got != *c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// A CNI config directory other than the runtime's: istio-cni chained there networks no pod
// (error); otherwise what was read is not what networks pods (warning); the same directory says
// nothing.
func TestRuntimeDirFinding(t *testing.T) {
	runtime := &RuntimeCNI{Runtime: "containerd", ConfigFile: "/etc/containerd/config.toml", ConfDir: "/var/lib/rancher/k3s/agent/etc/cni/net.d"}
	cases := []struct {
		name    string
		st      State
		want    nodecheck.Severity
		message string
	}{
		{name: "chained where the runtime does not read", st: State{ConfDir: "/etc/cni/net.d", Chained: true, Runtime: runtime},
			want: nodecheck.SeverityError, message: "no pod on this node goes through istio-cni"},
		{name: "another directory, not chained", st: State{ConfDir: "/etc/cni/net.d", Runtime: runtime},
			want: nodecheck.SeverityWarning, message: "is not what networks pods"},
		{name: "the runtime's directory", st: State{ConfDir: runtime.ConfDir + "/", Chained: true, Runtime: runtime}},
		{name: "runtime unknown", st: State{ConfDir: "/etc/cni/net.d", Chained: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, ok := runtimeDirFinding(&c.st, evidence(&c.st))
			if ok != (c.want != "") || f.Severity != c.want || !strings.Contains(f.Message, c.message) {
				t.Fatalf("finding %v %+v, want severity %q saying %q", ok, f, c.want, c.message)
			}
			if ok && (f.Code != nodecheck.IstioCNIIncomplete || !strings.Contains(f.Remedy, runtime.ConfDir) || f.Evidence["runtime"] == nil) {
				t.Errorf("finding lacks its code, remedy or evidence: %+v", f)
			}
		})
	}
}

func readTestdata(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// istio-cni's exclude_namespaces, read from the CNI config the runtime uses: the real installer's
// conflist (testdata/complete), Istio 1.27+'s own 02-istio-cni.conflist, a primary config that
// does not chain istio-cni, one that does not parse.
func TestReadExclusions(t *testing.T) {
	cases := []struct {
		dir  string
		want []string
		file string
	}{
		{dir: "complete", want: []string{"kube-system"}, file: "10-containerd-net.conflist"},
		{dir: "istio-owned-config-0600", want: []string{"kube-system"}, file: "02-istio-cni.conflist"},
		{dir: "chained-in-unused-file"},
		{dir: "malformed-primary"},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			ex, err := ReadExclusions(filepath.Join("testdata", c.dir, "root/etc/cni/net.d"), 1)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(ex.Namespaces, ",") != strings.Join(c.want, ",") || filepath.Base(ex.File) != c.file && c.file != "" {
				t.Errorf("got %+v, want %v from %s", ex, c.want, c.file)
			}
			if len(c.want) > 0 && !ex.Excludes(c.want[0]) {
				t.Errorf("%v does not exclude %s", ex, c.want[0])
			}
		})
	}
	if _, err := ReadExclusions(filepath.Join(t.TempDir(), "nope"), 1); err == nil {
		t.Error("a CNI config directory that does not exist gave no error")
	}
}

// The forms of k8s.v1.cni.cncf.io/networks Istio's injector leaves (appendMultusNetwork: its own
// value alone, appended to a flat list, appended to a JSON list) and ones without istio-cni.
func TestMultusNetworks(t *testing.T) {
	cases := []struct {
		value    string
		attaches bool
		err      bool
	}{
		{value: "default/istio-cni", attaches: true},
		{value: "macvlan-conf, default/istio-cni", attaches: true},
		{value: `[{"name": "macvlan-conf"}, {"name": "istio-cni", "namespace": "default"}]`, attaches: true},
		{value: "istio-cni@eth1", attaches: true},
		{value: "macvlan-conf"},
		{value: `[{"name": "macvlan-conf"}]`},
		{value: "default/istio-cni-other"},
		{value: ""},
		{value: "[{", err: true},
	}
	for _, c := range cases {
		nets, err := MultusNetworks(c.value)
		if (err != nil) != c.err || AttachesIstioCNI(nets) != c.attaches {
			t.Errorf("%q: networks %v, error %v; want attaches %v, error %v", c.value, nets, err, c.attaches, c.err)
		}
	}
	root := t.TempDir()
	copyTree(t, "testdata/multus-primary/root", root)
	ex, err := ReadExclusions(filepath.Join(root, "etc/cni/net.d"), 1)
	if err != nil || !ex.Multus {
		t.Errorf("the multus primary config read as %+v, %v", ex, err)
	}
}

// When the node's istio-cni-node came up, from its containers as the runtime gives them, and when a
// pod was networked (its first container's creation).
func TestAgentStartedAt(t *testing.T) {
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	agent := func(name string, cs ...nodecheck.Container) nodecheck.Target {
		return nodecheck.Target{Namespace: "istio-system", Name: name, Labels: map[string]string{"k8s-app": "istio-cni-node"}, Containers: cs}
	}
	running := func(start string, attempt uint32) nodecheck.Container {
		return nodecheck.Container{Name: "install-cni", Role: nodecheck.RoleApp, State: nodecheck.ContainerRunning, StartedAt: at(start), Attempt: attempt}
	}
	cases := []struct {
		name    string
		targets []nodecheck.Target
		want    string // "" when it cannot tell
	}{
		{"running", []nodecheck.Target{agent("istio-cni-node-a", running("2026-12-07T10:00:05Z", 0))}, "2026-12-07T10:00:05Z"},
		{"a rollout: the newer running one", []nodecheck.Target{agent("istio-cni-node-a", running("2026-12-07T10:00:05Z", 0)),
			agent("istio-cni-node-b", running("2026-12-07T11:00:00Z", 0))}, "2026-12-07T11:00:00Z"},
		{"restarted", []nodecheck.Target{agent("istio-cni-node-a", running("2026-12-07T10:00:05Z", 2))}, ""},
		{"not running", []nodecheck.Target{agent("istio-cni-node-a", nodecheck.Container{Name: "install-cni", State: nodecheck.ContainerExited, StartedAt: at("2026-12-07T10:00:05Z")})}, ""},
		{"no istio-cni-node", []nodecheck.Target{{Namespace: "shop", Name: "cart"}}, ""},
	}
	for _, c := range cases {
		got, ok := AgentStartedAt(c.targets)
		if ok != (c.want != "") || ok && !got.Equal(at(c.want)) {
			t.Errorf("%s: %v %v, want %q", c.name, got, ok, c.want)
		}
	}
	pod := nodecheck.Target{Containers: []nodecheck.Container{{CreatedAt: at("2026-12-07T10:00:03Z")}, {CreatedAt: at("2026-12-07T10:00:01Z")}, {}}}
	if got, ok := NetworkedAt(pod); !ok || !got.Equal(at("2026-12-07T10:00:01Z")) {
		t.Errorf("networked at %v %v", got, ok)
	}
	if _, ok := NetworkedAt(nodecheck.Target{}); ok {
		t.Error("a pod without containers has a networking time")
	}
}

// What the runtime loads of a directory decides the chain in use and where exclude_namespaces
// come from: one file (the libcni convention, max_conf_num 1), the first two, or all of them
// (max_conf_num 0), on real config files (testdata/*/root/etc/cni/net.d).
func TestChainInUseLoading(t *testing.T) {
	cases := []struct {
		dir       string
		loads     int
		chain     cnichain.Chain
		exclusion string // the file exclude_namespaces are read from; "" none
	}{
		{dir: "chained-in-unused-file", loads: 1, chain: cnichain.Unchained},
		{dir: "chained-in-unused-file", loads: 2, chain: cnichain.Chained, exclusion: "10-containerd-net.conflist"},
		{dir: "max-conf-num-2-chained-in-third", loads: 2, chain: cnichain.Unchained},
		{dir: "max-conf-num-2-chained-in-third", loads: 0, chain: cnichain.Chained, exclusion: "10-containerd-net.conflist"},
		{dir: "complete", loads: 0, chain: cnichain.Chained, exclusion: "10-containerd-net.conflist"},
		{dir: "multus-primary", loads: 0, chain: cnichain.Unknown, exclusion: "00-multus.conf"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s, %d", c.dir, c.loads), func(t *testing.T) {
			dir := filepath.Join("testdata", c.dir, "root/etc/cni/net.d")
			snap, err := ChainInUseLoading(c.loads)(dir)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Chain != c.chain || filepath.Dir(snap.Primary) != dir {
				t.Errorf("chain %+v, want %s", snap, c.chain)
			}
			ex, err := ReadExclusions(dir, c.loads)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(ex.File) != c.exclusion && (ex.File != "" || c.exclusion != "") {
				t.Errorf("exclusions %+v, want them from %q", ex, c.exclusion)
			}
		})
	}
}

// How many files each runtime loads, from its max_conf_num.
func TestRuntimeLoads(t *testing.T) {
	for _, c := range []struct {
		r    *RuntimeCNI
		want int
	}{
		{nil, 1},
		{&RuntimeCNI{Runtime: "containerd", MaxConfNum: 1}, 1},
		{&RuntimeCNI{Runtime: "containerd", MaxConfNum: 3}, 3},
		{&RuntimeCNI{Runtime: "containerd", MaxConfNum: 0}, 0},
		{&RuntimeCNI{Runtime: "containerd", MaxConfNum: -1}, 0},
		{&RuntimeCNI{Runtime: "cri-o"}, 1},
	} {
		if got := c.r.Loads(); got != c.want {
			t.Errorf("%+v loads %d, want %d", c.r, got, c.want)
		}
	}
}
