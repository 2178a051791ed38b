package kubelet_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"

	"sigs.k8s.io/yaml"

	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// objectMeta is what the template's annotation function and .ObjectMeta.Annotations read.
type objectMeta struct{ Annotations map[string]string }

// renderTemplateInit renders the init container's args and env out of the pinned Istio's own
// injection template, with just enough of the injector's template functions (written here from
// their documented behaviour) for that part of it.
func renderTemplateInit(t *testing.T, v kubelet.MeshValues, annotations map[string]string) ([]string, map[string]string) {
	t.Helper()
	path := filepath.Join(testbed.IstioSource(t), "manifests", "charts", "istio-control", "istio-discovery", "files", "injection-template.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	// The $tproxy variable is set near the top; the init container's args and env run from its
	// `args:` to its `resources:`.
	var tproxy string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "$tproxy :=") {
			tproxy = line
		}
	}
	start := strings.Index(text, "    args:\n    - istio-iptables\n")
	end := strings.Index(text[max(start, 0):], "    resources:\n")
	if tproxy == "" || start < 0 || end < 0 {
		t.Fatalf("%s: istio-init's args are not where this test looks for them", path)
	}
	segment := tproxy + "\n" + text[start:start+end]

	empty := func(x any) bool {
		if x == nil {
			return true
		}
		r := reflect.ValueOf(x)
		return r.IsZero() || (r.Kind() == reflect.Map && r.Len() == 0)
	}
	funcs := template.FuncMap{
		"annotation": func(m objectMeta, key string, def any) string {
			if a, ok := m.Annotations[key]; ok {
				return a
			}
			return fmt.Sprint(def)
		},
		"isset": func(m map[string]string, key string) bool { _, ok := m[key]; return ok },
		"valueOrDefault": func(x, def any) any {
			if x == nil || x == "" {
				return def
			}
			return x
		},
		"default": func(def, x any) any {
			if empty(x) {
				return def
			}
			return x
		},
		"quote": func(x any) string { return strconv.Quote(fmt.Sprint(x)) },
		"excludeInboundPort": func(port any, excluded string) string {
			p := strings.TrimSpace(fmt.Sprint(port))
			if p == "" || p == "0" {
				return excluded
			}
			var kept []string
			for _, e := range strings.Split(excluded, ",") {
				if e == p {
					return excluded
				}
				if e = strings.TrimSpace(e); e != "" {
					kept = append(kept, e)
				}
			}
			return strings.Join(append(kept, p), ",")
		},
	}
	tmpl, err := template.New("istio-init").Funcs(funcs).Parse(segment)
	if err != nil {
		t.Fatalf("parsing the template's istio-init: %v", err)
	}
	proxyUID, proxyGID := any(nil), any(nil)
	if v.ProxyUID != 0 {
		proxyUID = v.ProxyUID
	}
	if v.ProxyGID != 0 {
		proxyGID = v.ProxyGID
	}
	data := map[string]any{
		"ObjectMeta": objectMeta{Annotations: annotations},
		"MeshConfig": map[string]any{"ProxyListenPort": v.ProxyListenPort, "ProxyInboundListenPort": v.ProxyInboundListenPort},
		"ProxyUID":   proxyUID, "ProxyGID": proxyGID,
		"ProxyConfig": map[string]any{"InterceptionMode": v.InterceptionMode, "ProxyMetadata": v.ProxyMetadata},
		"Values": map[string]any{
			"pilot": map[string]any{"cni": map[string]any{"enabled": v.CNI}},
			"global": map[string]any{
				"logAsJson":      v.LogAsJSON,
				"nativeNftables": v.NativeNftables,
				"logging":        map[string]any{"level": v.LogLevel},
				"proxy_init":     map[string]any{"forceApplyIptables": v.ForceApplyIptables},
				"proxy": map[string]any{
					"includeIPRanges": v.IncludeIPRanges, "excludeIPRanges": v.ExcludeIPRanges,
					"includeInboundPorts": v.IncludeInboundPorts, "excludeInboundPorts": v.ExcludeInboundPorts,
					"statusPort":           v.StatusPort,
					"includeOutboundPorts": v.IncludeOutboundPorts, "excludeOutboundPorts": v.ExcludeOutboundPorts,
					"privileged": v.Privileged,
				},
			},
		},
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		t.Fatalf("rendering the template's istio-init: %v", err)
	}
	var c struct {
		Args []string `json:"args"`
		Env  []struct {
			Name, Value string
		} `json:"env"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &c); err != nil {
		t.Fatalf("the rendered istio-init is not YAML: %v\n%s", err, out.String())
	}
	var env map[string]string
	for _, e := range c.Env {
		if env == nil {
			env = map[string]string{}
		}
		env[e.Name] = e.Value
	}
	return c.Args, env
}

// InjectedInit renders istio-init exactly as Istio's injection template does: the same args in
// the same order, the same env, with defaults and with every conditional flag.
func TestInjectedInitIsTheTemplates(t *testing.T) {
	custom := kubelet.DefaultMeshValues()
	custom.ProxyListenPort, custom.ProxyInboundListenPort = 15101, 15106
	custom.ProxyUID, custom.ProxyGID = 1000650000, 1000650000
	custom.IncludeIPRanges, custom.ExcludeIPRanges = "10.0.0.0/8,172.16.0.0/12", "10.96.0.1/32"
	custom.IncludeInboundPorts, custom.ExcludeInboundPorts = "8080,9090", "8081,15020"
	custom.IncludeOutboundPorts, custom.ExcludeOutboundPorts = "3306", "5432"
	custom.LogLevel, custom.LogAsJSON = "default:debug", true
	custom.NativeNftables, custom.ForceApplyIptables = true, true
	custom.ProxyMetadata = map[string]string{"ISTIO_DUAL_STACK": "true", "ISTIO_META_DNS_CAPTURE": "true"}
	cni := custom
	cni.CNI = true
	tproxy := kubelet.DefaultMeshValues()
	tproxy.InterceptionMode, tproxy.ProxyUID, tproxy.StatusPort = "TPROXY", 2000, 0

	for _, tc := range []struct {
		name        string
		values      kubelet.MeshValues
		annotations map[string]string
	}{
		{name: "defaults", values: kubelet.DefaultMeshValues()},
		{name: "every mesh value", values: custom},
		{name: "cni", values: cni},
		{name: "tproxy without status port", values: tproxy},
		{name: "annotations", values: kubelet.DefaultMeshValues(), annotations: map[string]string{
			"sidecar.istio.io/interceptionMode":                "TPROXY",
			"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.0/12",
			"traffic.sidecar.istio.io/excludeInboundPorts":     "9000",
			"status.sidecar.istio.io/port":                     "15021",
			"traffic.sidecar.istio.io/includeOutboundPorts":    "",
			"traffic.sidecar.istio.io/kubevirtInterfaces":      "net1",
			"traffic.sidecar.istio.io/excludeInterfaces":       "eth1",
			"sidecar.istio.io/agentLogLevel":                   "default:warn",
			"traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
			"traffic.sidecar.istio.io/includeInboundPorts":     "",
			"traffic.sidecar.istio.io/excludeOutboundPorts":    "25",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantArgs, wantEnv := renderTemplateInit(t, tc.values, tc.annotations)
			got := kubelet.InjectedInitFor(tc.values, tc.annotations)
			if !slices.Equal(got.Args, wantArgs) {
				t.Errorf("args differ from the template's:\n got  %q\n want %q", got.Args, wantArgs)
			}
			if !reflect.DeepEqual(got.Env, wantEnv) {
				t.Errorf("env %v, the template's %v", got.Env, wantEnv)
			}
			if got.Command != nil {
				t.Errorf("command %q: the template sets none, the image's entrypoint (pilot-agent) runs", got.Command)
			}
		})
	}
	// The defaults are what the rest of the test bed writes rules with.
	if got := kubelet.IstioInit().Args; !slices.Equal(got, append([]string{"istio-iptables"}, testbed.DefaultSidecarArgs()...)) {
		t.Errorf("IstioInit's args %q are not DefaultSidecarArgs", got)
	}
}
