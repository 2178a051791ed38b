package intent

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// captures is where test/cmd/capture-testdata wrote what real Istio was told for each scenario:
// istio-init's argv (args.txt, one argument a line), its env (env.txt) and the pod's annotations.
const captures = "../rules/testdata/captures"

// captureFile reads one file of every captured scenario that has it.
func captureFile(f *testing.F, name string) [][]byte {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join(captures, "*", name))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no %s in %s: %v", name, captures, err)
	}
	var out [][]byte
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

// lines is a captured args.txt or env.txt as the argv or env it was: one element a line, empty
// elements kept (istio-init is passed `-x ""`).
func lines(data []byte) []string {
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// FuzzParseInitArgs: whatever argv and environment istio-init runs with (NUL-separated, as no
// element of either can hold a NUL), reading them never panics; what it reads names only flags
// istio-iptables has, each from the command line or one of that flag's variables; written back as
// `--flag=value` it reads the same; and resolving it gives an error naming the flag or a capture
// configuration istio-iptables could have built.
func FuzzParseInitArgs(f *testing.F) {
	envs := map[string][]byte{}
	envPaths, _ := filepath.Glob(filepath.Join(captures, "*", "env.txt"))
	for _, p := range envPaths {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		envs[filepath.Dir(p)] = data
	}
	argsPaths, _ := filepath.Glob(filepath.Join(captures, "*", "args.txt"))
	if len(argsPaths) == 0 {
		f.Fatalf("no args.txt in %s", captures)
	}
	for _, p := range argsPaths {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		// The captures hold istio-iptables' own argv; containerd starts pilot-agent with it.
		argv := append([]string{"/usr/local/bin/pilot-agent"}, lines(data)...)
		f.Add(strings.Join(argv, "\x00"), strings.Join(lines(envs[filepath.Dir(p)]), "\x00"))
	}
	f.Add(strings.Join(templateArgv, "\x00"), "ISTIO_DUAL_STACK=yes please\x00INBOUND_CAPTURE_PORT=http")
	f.Add("istio-iptables\x00-nz15007\x00--dual-stack=false\x00-u\x00--\x00-u\x002", "DUAL_STACK=true")

	known := map[string]bool{}
	for _, fl := range initFlags {
		known[fl.long] = true
	}
	f.Fuzz(func(t *testing.T, argvS, envS string) {
		argv := strings.Split(argvS, "\x00")
		env := strings.Split(envS, "\x00")
		a, err := ParseInitArgs(argv, env)
		if err != nil {
			if !strings.Contains(err.Error(), "istio-iptables") {
				t.Fatalf("error %q does not say it is about istio-iptables", err)
			}
			return
		}
		if len(a.Values) != len(a.From) {
			t.Fatalf("%d values but %d sources: %v %v", len(a.Values), len(a.From), a.Values, a.From)
		}
		for flag := range a.Values {
			if !known[flag] {
				t.Fatalf("value for %q, which istio-iptables does not have", flag)
			}
			from := a.From[flag]
			if name, ok := strings.CutPrefix(from, "env "); ok {
				fl, _ := lookupInitFlag(flag, false)
				if !slices.Contains(fl.envNames(), name) {
					t.Fatalf("--%s from %q, not one of its variables %v", flag, from, fl.envNames())
				}
			} else if from != "args" {
				t.Fatalf("--%s from %q", flag, from)
			}
		}
		for _, u := range a.Unknown {
			if long, ok := strings.CutPrefix(u, "--"); !strings.HasPrefix(u, "-") || ok && known[long] {
				t.Fatalf("unknown flag %q", u)
			}
		}

		// What was read, as a command line of long flags, reads the same.
		again := []string{"istio-iptables"}
		for _, flag := range slices.Sorted(maps.Keys(a.Values)) {
			again = append(again, "--"+flag+"="+a.Values[flag])
		}
		b, err := ParseInitArgs(again, nil)
		if err != nil {
			t.Fatalf("reading back %q: %v", again, err)
		}
		if !maps.Equal(a.Values, b.Values) {
			t.Fatalf("read back differently\n got %v\nwant %v", b.Values, a.Values)
		}

		for _, cni := range []bool{false, true} {
			c, err := FromInitArgs(a, cni)
			if err != nil {
				if !strings.Contains(err.Error(), "istio-iptables") {
					t.Fatalf("error %q does not name istio-iptables' flag", err)
				}
				continue
			}
			checkConfig(t, c)
			if c.CNIMode != cni {
				t.Fatalf("CNIMode %v, want %v", c.CNIMode, cni)
			}
		}
	})
}

// annotationKeys are the annotations that decide a sidecar pod's or an ambient pod's capture, in
// the order FuzzAnnotations takes their values.
var annotationKeys = []string{
	istiopod.AnnotationInterceptionMode,
	istiopod.AnnotationStatusPort,
	istiopod.AnnotationProxyConfig,
	istiopod.AnnotationIncludeInboundPorts,
	istiopod.AnnotationExcludeInboundPorts,
	istiopod.AnnotationIncludeOutboundCIDRs,
	istiopod.AnnotationExcludeOutboundCIDRs,
	istiopod.AnnotationIncludeOutboundPorts,
	istiopod.AnnotationExcludeOutboundPorts,
	istiopod.AnnotationExcludeInterfaces,
	istiopod.AnnotationKubevirtInterfaces,
	istiopod.AnnotationRerouteInterfaces,
	istiopod.AnnotationAmbientDNSCapture,
	istiopod.AnnotationAmbientBypassInbound,
}

// FuzzAnnotations: whatever a pod's annotations say (a value per annotation, NUL-separated in
// annotationKeys' order; an empty element is an annotation not set), resolving them never
// panics and gives an error naming an annotation or a capture configuration Istio could have
// been told, the same twice over.
func FuzzAnnotations(f *testing.F) {
	for _, data := range captureFile(f, "annotations.json") {
		var a map[string]string
		if err := json.Unmarshal(data, &a); err != nil {
			f.Fatal(err)
		}
		vals := make([]string, len(annotationKeys))
		for i, k := range annotationKeys {
			vals[i] = a[k]
		}
		f.Add(strings.Join(vals, "\x00"), false, int64(-1))
	}
	f.Add("TPROXY\x000\x00proxyMetadata:\n  ISTIO_DUAL_STACK: \"true\"\x00*\x00\x00*\x00fd00::1/8", true, int64(1500))
	f.Add("\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00net1,net2\x00false\x00true", false, int64(0))
	f.Fuzz(func(t *testing.T, values string, cni bool, uid int64) {
		a := map[string]string{}
		for i, v := range strings.Split(values, "\x00") {
			if i < len(annotationKeys) && v != "" {
				a[annotationKeys[i]] = v
			}
		}
		target := nodecheck.Target{Annotations: a, CNIMode: cni}
		if uid >= 0 {
			target.ProxyUser = &nodecheck.User{UID: uid, GID: uid}
		}
		c, err := fromTargetAnnotations(target)
		again, err2 := fromTargetAnnotations(target)
		if (err == nil) != (err2 == nil) || (err == nil && !configEqual(c, again)) {
			t.Fatalf("not the same twice: %v %v", err, err2)
		}
		if err != nil {
			if !namesAnAnnotation(err.Error(), a) {
				t.Fatalf("error %q names no annotation the pod has", err)
			}
		} else {
			checkConfig(t, c)
		}

		amb, err := AmbientFromAnnotations(a)
		if err != nil {
			if !namesAnAnnotation(err.Error(), a) {
				t.Fatalf("ambient: error %q names no annotation the pod has", err)
			}
			return
		}
		if !amb.HostProbeSNAT.Is4() || !amb.HostProbeSNATIPv6.Is6() {
			t.Fatalf("ambient probe SNAT addresses %v %v", amb.HostProbeSNAT, amb.HostProbeSNATIPv6)
		}
		for _, ifc := range amb.VirtualInterfaces {
			if ifc == "" || strings.TrimSpace(ifc) != ifc || strings.Contains(ifc, ",") {
				t.Fatalf("ambient virtual interface %q", ifc)
			}
		}
	})
}

func namesAnAnnotation(msg string, a map[string]string) bool {
	for k := range a {
		if strings.Contains(msg, k) {
			return true
		}
	}
	return false
}

func configEqual(a, b Config) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// checkConfig fails t unless c is a configuration istio-iptables could run with: a known mode,
// ports that are ports, CIDRs in their masked form, list elements trimmed and non-empty.
func checkConfig(t *testing.T, c Config) {
	t.Helper()
	switch c.Mode {
	case istiopod.ModeRedirect, istiopod.ModeTProxy, istiopod.ModeNone:
	default:
		t.Fatalf("mode %q", c.Mode)
	}
	if c.ProxyPort == 0 || c.InboundCapturePort == 0 || c.InboundTunnelPort == 0 {
		t.Fatalf("a port 0: %d %d %d", c.ProxyPort, c.InboundCapturePort, c.InboundTunnelPort)
	}
	isPort := func(s string) bool {
		n, err := strconv.ParseUint(s, 10, 16)
		return err == nil && n > 0
	}
	if c.IncludeInboundPorts != "" && c.IncludeInboundPorts != "*" {
		for _, p := range c.IncludeInboundPortList() {
			if p != "*" && !isPort(p) {
				t.Fatalf("include inbound port %q in %q", p, c.IncludeInboundPorts)
			}
		}
	}
	for name, list := range map[string][]string{"exclude inbound": c.ExcludeInboundPorts,
		"include outbound": c.IncludeOutboundPorts, "exclude outbound": c.ExcludeOutboundPorts} {
		for _, p := range list {
			if !isPort(p) {
				t.Fatalf("%s port %q in %v", name, p, list)
			}
		}
	}
	for _, list := range [][]string{c.ProxyUID, c.ProxyGID, c.ExcludeInterfaces, c.RerouteInterfaces} {
		for _, s := range list {
			if s == "" || strings.TrimSpace(s) != s || strings.Contains(s, ",") {
				t.Fatalf("list element %q in %q", s, list)
			}
		}
	}
	if len(c.ProxyUID) == 0 || len(c.ProxyGID) == 0 {
		t.Fatalf("no proxy uid or gid: %v %v", c.ProxyUID, c.ProxyGID)
	}
	if c.IncludeOutboundAll && len(c.IncludeOutboundCIDRs) > 0 {
		t.Fatalf("all outbound and CIDRs %v", c.IncludeOutboundCIDRs)
	}
	for _, p := range append(slices.Clone(c.IncludeOutboundCIDRs), c.ExcludeOutboundCIDRs...) {
		if !p.IsValid() || p != p.Masked() {
			t.Fatalf("CIDR %v is not valid and masked", p)
		}
	}
}
