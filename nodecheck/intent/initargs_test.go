package intent

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// templateArgv is istio-init's argv as containerd starts it for a pod injected with the default
// values: the image's entrypoint, then the args the injection template renders.
var templateArgv = []string{
	"/usr/local/bin/pilot-agent", "istio-iptables",
	"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
	"-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
	"--log_output_level=default:info",
}

func TestParseInitArgs(t *testing.T) {
	cases := []struct {
		name      string
		argv, env []string
		want      map[string]string
		from      map[string]string
		unknown   []string
		ignored   []string
	}{
		{
			name: "injection template defaults",
			argv: templateArgv,
			want: map[string]string{
				"envoy-port": "15001", "inbound-capture-port": "15006", "proxy-uid": "1337",
				"istio-inbound-interception-mode": "REDIRECT", "istio-service-cidr": "*",
				"istio-service-exclude-cidr": "", "istio-inbound-ports": "*",
				"istio-local-exclude-ports": "15090,15021,15020", "log_output_level": "default:info",
			},
		},
		{
			name: "long flags with = and separate values, grouped booleans",
			argv: []string{"istio-iptables", "--envoy-port=15009", "--proxy-uid", "1500", "-nz15007", "--dual-stack=false"},
			want: map[string]string{"envoy-port": "15009", "proxy-uid": "1500", "dry-run": "true",
				"inbound-capture-port": "15007", "dual-stack": "false"},
		},
		{
			name: "proxyMetadata in the env, a flag beats its variable",
			argv: []string{"pilot-agent", "istio-iptables", "-p", "15001", "--redirect-dns=false"},
			env:  []string{"PATH=/usr/bin", "ISTIO_DUAL_STACK=true", "ISTIO_META_DNS_CAPTURE=true", "INBOUND_CAPTURE_PORT=15016", "ENVOY_PORT=1"},
			want: map[string]string{"envoy-port": "15001", "dual-stack": "true", "redirect-dns": "false", "inbound-capture-port": "15016"},
			from: map[string]string{"envoy-port": "args", "dual-stack": "env ISTIO_DUAL_STACK", "redirect-dns": "args",
				"inbound-capture-port": "env INBOUND_CAPTURE_PORT"},
		},
		{
			name: "istio-iptables' own name for a variable wins over proxyMetadata's",
			argv: []string{"istio-iptables"},
			env:  []string{"INVALID_DROP=true", "DROP_INVALID=false"},
			want: map[string]string{"drop-invalid": "true"},
			from: map[string]string{"drop-invalid": "env INVALID_DROP"},
		},
		{
			name:    "flags of a newer Istio are listed, the rest is read",
			argv:    []string{"pilot-agent", "--log_as_json", "istio-iptables", "--future-flag=1", "-Y", "-u", "1337"},
			want:    map[string]string{"proxy-uid": "1337", "log_as_json": "true"},
			unknown: []string{"--future-flag", "-Y"},
		},
		{
			name:    "a value istio-iptables' type refuses in the env is ignored, as istio-iptables does",
			argv:    []string{"istio-iptables"},
			env:     []string{"DUAL_STACK=true", "ISTIO_DUAL_STACK=yes please", "INBOUND_CAPTURE_PORT=http"},
			want:    map[string]string{"dual-stack": "true"},
			from:    map[string]string{"dual-stack": "env DUAL_STACK"},
			ignored: []string{"INBOUND_CAPTURE_PORT=http", "ISTIO_DUAL_STACK=yes please"},
		},
		{
			name: "nothing after -- is a flag",
			argv: []string{"istio-iptables", "-u", "1", "--", "-u", "2"},
			want: map[string]string{"proxy-uid": "1"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseInitArgs(c.argv, c.env)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got.Values, c.want) {
				t.Errorf("values\n got %v\nwant %v", got.Values, c.want)
			}
			for flag, from := range c.from {
				if got.From[flag] != from {
					t.Errorf("%s from %q, want %q", flag, got.From[flag], from)
				}
			}
			if !slices.Equal(got.IgnoredEnv, c.ignored) {
				t.Errorf("ignored env %v, want %v", got.IgnoredEnv, c.ignored)
			}
			if !slices.Equal(got.Unknown, c.unknown) {
				t.Errorf("unknown %v, want %v", got.Unknown, c.unknown)
			}
		})
	}
}

func TestParseInitArgsErrors(t *testing.T) {
	cases := map[string]struct {
		argv []string
		want string
	}{
		"empty":               {nil, "empty command line"},
		"not istio-iptables":  {[]string{"/bin/sh", "-c", "iptables-restore"}, "does not run istio-iptables"},
		"long without value":  {[]string{"istio-iptables", "-p", "15001", "--proxy-uid"}, "--proxy-uid needs a value"},
		"short without value": {[]string{"istio-iptables", "-u"}, "-u needs a value"},
	}
	for name, c := range cases {
		_, err := ParseInitArgs(c.argv, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, c.want)
		}
	}
}

func TestFromInitArgs(t *testing.T) {
	argv := []string{"pilot-agent", "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1500", "-m", "TPROXY",
		"-i", "10.96.0.0/12,fd00::/108", "-x", "10.0.0.0/8", "-b", "8080,9090", "-d", "15090,15021,15020,9901",
		"-q", "5432", "-o", "25", "--native-nftables"}
	a, err := ParseInitArgs(argv, []string{"ISTIO_DUAL_STACK=true", "ISTIO_META_DNS_CAPTURE=true"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := FromInitArgs(a, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "TPROXY" || c.ProxyPort != 15001 || !slices.Equal(c.ProxyUID, []string{"1500"}) || !slices.Equal(c.ProxyGID, []string{"1500"}) {
		t.Errorf("mode/port/uid/gid: %+v", c)
	}
	if len(c.IncludeOutboundCIDRs) != 2 || len(c.ExcludeOutboundCIDRs) != 1 || c.IncludeOutboundAll {
		t.Errorf("outbound cidrs: include %v exclude %v all %v", c.IncludeOutboundCIDRs, c.ExcludeOutboundCIDRs, c.IncludeOutboundAll)
	}
	if c.IncludeInboundPorts != "8080,9090" || !slices.Equal(c.ExcludeInboundPorts, []string{"15090", "15021", "15020", "9901"}) {
		t.Errorf("inbound ports: include %q exclude %v", c.IncludeInboundPorts, c.ExcludeInboundPorts)
	}
	if !slices.Equal(c.IncludeOutboundPorts, []string{"5432"}) || !slices.Equal(c.ExcludeOutboundPorts, []string{"25"}) {
		t.Errorf("outbound ports: include %v exclude %v", c.IncludeOutboundPorts, c.ExcludeOutboundPorts)
	}
	if !c.DualStack || !c.RedirectDNS || !c.NativeNftables || c.DropInvalid {
		t.Errorf("booleans: dual %v dns %v nft %v drop %v", c.DualStack, c.RedirectDNS, c.NativeNftables, c.DropInvalid)
	}

	// istio-iptables' own defaults, not the injector's: without -i and -b nothing is captured.
	bare, err := FromInitArgs(InitArgs{Values: map[string]string{}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if bare.IncludeOutboundAll || len(bare.IncludeOutboundCIDRs) != 0 || bare.IncludeInboundPorts != "" || bare.ProxyPort != 15001 {
		t.Errorf("bare istio-iptables: %+v", bare)
	}
}

func TestFromInitArgsErrorsNameTheFlag(t *testing.T) {
	cases := map[string]struct {
		argv []string
		env  []string
		want string
	}{
		"port":      {[]string{"istio-iptables", "-p", "http"}, nil, "--envoy-port (args)"},
		"port zero": {[]string{"istio-iptables", "-z", "0"}, nil, "--inbound-capture-port"},
		"mode":      {[]string{"istio-iptables", "-m", "MAGIC"}, nil, "-m (args)"},
		"cidr":      {[]string{"istio-iptables", "-x", "10.0.0.0/33"}, nil, "-x"},
		"inbound":   {[]string{"istio-iptables", "-b", "80,http"}, nil, "-b"},
		"outbound":  {[]string{"istio-iptables", "-o", "0"}, nil, "istio-local-outbound-ports-exclude"},
		"mark":      {[]string{"istio-iptables", "-t", "x"}, nil, "-t (args)"},
		// Found by FuzzParseInitArgs: a list of no id left the proxy without a group.
		"no group": {[]string{"istio-iptables", "-g", ","}, nil, "-g (args)"},
		"no user":  {[]string{"istio-iptables", "-u", " , "}, nil, "-u (args)"},
	}
	for name, c := range cases {
		a, err := ParseInitArgs(c.argv, c.env)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, err = FromInitArgs(a, false)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", name, err, c.want)
		}
	}
}
