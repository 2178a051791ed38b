package intent

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// A flag of istio-iptables: its long name, its shorthand, whether it is boolean, whether it is a
// port (a uint16), and the environment variables it falls back to, in the order istio-iptables
// applies them (a later one wins over an earlier one, a flag on the command line over both).
type initFlag struct {
	long, short string
	boolean     bool
	port        bool
	env         []string
}

// initFlags are istio-iptables' flags (tools/istio-iptables/pkg/cmd/root.go): every one binds the
// environment variable of its upper-cased name except -p, and three take a second variable that
// Istio's other components use (proxyMetadata renders them into istio-init's env).
var initFlags = []initFlag{
	{long: "envoy-port", short: "p", port: true},
	{long: "inbound-capture-port", short: "z", port: true},
	{long: "inbound-tunnel-port", short: "e", port: true},
	{long: "proxy-uid", short: "u"},
	{long: "proxy-gid", short: "g"},
	{long: "istio-inbound-interception-mode", short: "m"},
	{long: "istio-inbound-ports", short: "b"},
	{long: "istio-local-exclude-ports", short: "d"},
	{long: "istio-exclude-interfaces", short: "c"},
	{long: "istio-service-cidr", short: "i"},
	{long: "istio-service-exclude-cidr", short: "x"},
	{long: "istio-outbound-ports", short: "q"},
	{long: "istio-local-outbound-ports-exclude", short: "o"},
	{long: "kube-virt-interfaces", short: "k"},
	{long: "istio-inbound-tproxy-mark", short: "t"},
	{long: "istio-inbound-tproxy-route-table", short: "r"},
	{long: "dry-run", short: "n", boolean: true},
	{long: "iptables-probe-port", port: true},
	{long: "probe-timeout"},
	{long: "skip-rule-apply", boolean: true},
	{long: "run-validation", boolean: true},
	{long: "redirect-dns", boolean: true, env: []string{"ISTIO_META_DNS_CAPTURE"}},
	{long: "drop-invalid", boolean: true, env: []string{"INVALID_DROP"}},
	{long: "dual-stack", boolean: true, env: []string{"ISTIO_DUAL_STACK"}},
	{long: "capture-all-dns", boolean: true},
	{long: "network-namespace"},
	{long: "cni-mode", boolean: true},
	{long: "reconcile", boolean: true},
	{long: "cleanup-only", boolean: true},
	{long: "force-apply", boolean: true},
	{long: "native-nftables", boolean: true},
	{long: "force-iptables-binary"},
	// pilot-agent's logging flags, which the injection template passes too; they decide no rule.
	{long: "log_output_level"},
	{long: "log_stacktrace_level"},
	{long: "log_caller"},
	{long: "log_target"},
	{long: "log_as_json", boolean: true},
}

func lookupInitFlag(name string, short bool) (initFlag, bool) {
	for _, f := range initFlags {
		if (short && f.short == name) || (!short && f.long == name) {
			return f, true
		}
	}
	return initFlag{}, false
}

// accepts says whether istio-iptables takes s as this flag's value: from the environment, a value
// its type refuses is dropped without a word and the flag keeps what it had.
func (f initFlag) accepts(s string) bool {
	switch {
	case f.boolean:
		_, err := strconv.ParseBool(s)
		return err == nil
	case f.port:
		_, err := strconv.ParseUint(s, 10, 16)
		return err == nil
	}
	return true
}

// initFlagEnv is envNames of each of initFlags, in the same order: worked out once, since every
// istio-init-mode pod's check reads them.
var initFlagEnv = func() [][]string {
	out := make([][]string, len(initFlags))
	for i, f := range initFlags {
		out[i] = f.envNames()
	}
	return out
}()

// envNames are the variables a flag reads, in the order istio-iptables applies them.
func (f initFlag) envNames() []string {
	if f.long == "envoy-port" || strings.HasPrefix(f.long, "log_") {
		return nil // bound without its environment variable
	}
	return append([]string{strings.ToUpper(strings.ReplaceAll(f.long, "-", "_"))}, f.env...)
}

// InitArgs is what one run of istio-iptables was told, read from its argv and environment with
// istio-iptables' own rules: long and short flags, `=` or a separate value (never for a boolean),
// the environment variables each flag falls back to, and a command-line flag winning over them.
type InitArgs struct {
	// Values holds every flag that was set, by long name, as istio-iptables sees it.
	Values map[string]string `json:"values"`
	// From says where each value came from: "args", or "env NAME".
	From map[string]string `json:"from"`
	// Unknown are flags this meshdoctor does not know (a newer Istio's): their values are not
	// judged, and the report names them.
	Unknown []string `json:"unknown,omitempty"`
	// IgnoredEnv are variables istio-iptables reads whose values its flag's type refuses
	// (ISTIO_DUAL_STACK=yes): istio-iptables ignores them, and so does the intent.
	IgnoredEnv []string `json:"ignoredEnv,omitempty"`
}

// ParseInitArgs reads an istio-iptables command line as the runtime started it: the container's
// whole argv (the image's entrypoint, pilot-agent, then the injected args beginning with
// istio-iptables), or istio-iptables' own argv. env is the container's environment (NAME=VALUE).
// An argv that is not istio-iptables' is an error; a flag it does not know is listed in Unknown.
func ParseInitArgs(argv, env []string) (InitArgs, error) {
	rest, err := istioIptablesArgs(argv)
	if err != nil {
		return InitArgs{}, err
	}
	a := InitArgs{Values: map[string]string{}, From: map[string]string{}}
	environ := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			environ[k] = v
		}
	}
	for i, f := range initFlags {
		for _, name := range initFlagEnv[i] {
			v, ok := environ[name]
			switch {
			case !ok:
			case f.accepts(v):
				a.Values[f.long], a.From[f.long] = v, "env "+name
			default:
				a.IgnoredEnv = append(a.IgnoredEnv, name+"="+v)
			}
		}
	}
	for i := 0; i < len(rest); i++ {
		arg := rest[i]
		switch {
		case arg == "--":
			return a, nil // what follows is positional: istio-iptables takes none
		case strings.HasPrefix(arg, "--"):
			name, value, hasValue := strings.Cut(arg[2:], "=")
			f, ok := lookupInitFlag(name, false)
			if !ok {
				a.Unknown = append(a.Unknown, "--"+name)
				continue
			}
			if !hasValue {
				if f.boolean {
					value = "true"
				} else if i+1 < len(rest) {
					i++
					value = rest[i]
				} else {
					return a, fmt.Errorf("istio-iptables flag --%s needs a value", name)
				}
			}
			a.Values[f.long], a.From[f.long] = value, "args"
		case strings.HasPrefix(arg, "-") && len(arg) > 1:
			if err := a.shorthands(arg[1:], rest, &i); err != nil {
				return a, err
			}
		}
		// A positional argument is ignored, as cobra hands it to a Run that reads none.
	}
	return a, nil
}

// shorthands reads one `-x…` argument as pflag does: booleans may be grouped (-nf), a flag with a
// value takes the rest of the argument (-p15001, -p=15001) or the next one (-p 15001).
func (a *InitArgs) shorthands(group string, rest []string, i *int) error {
	for group != "" {
		name := group[:1]
		group = group[1:]
		f, ok := lookupInitFlag(name, true)
		if !ok {
			a.Unknown = append(a.Unknown, "-"+name)
			return nil // pflag would stop here too; the rest of the group means nothing to us
		}
		if f.boolean {
			value := "true"
			if strings.HasPrefix(group, "=") {
				value, group = group[1:], ""
			}
			a.Values[f.long], a.From[f.long] = value, "args"
			continue
		}
		value := strings.TrimPrefix(group, "=")
		if group == "" {
			if *i+1 >= len(rest) {
				return fmt.Errorf("istio-iptables flag -%s needs a value", name)
			}
			*i++
			value = rest[*i]
		}
		a.Values[f.long], a.From[f.long] = value, "args"
		return nil
	}
	return nil
}

// istioIptablesArgs returns what follows the istio-iptables command in argv: after the
// `istio-iptables` subcommand of pilot-agent, or after argv[0] when the binary is istio-iptables.
func istioIptablesArgs(argv []string) ([]string, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("empty command line: not istio-iptables")
	}
	if path.Base(argv[0]) == "istio-iptables" {
		return argv[1:], nil
	}
	for i, arg := range argv {
		if arg == "istio-iptables" {
			// pilot-agent's own flags may stand before its subcommand.
			return append(argv[1:i:i], argv[i+1:]...), nil
		}
	}
	return nil, fmt.Errorf("command line %q does not run istio-iptables", strings.Join(argv, " "))
}
