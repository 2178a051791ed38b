package testbed

import (
	"context"
	"errors"
	"fmt"
)

// Istio's defaults that tests refer to.
const (
	ProxyUID           = "1337"  // istio-proxy's uid and gid; its traffic is never redirected
	OutboundProxyPort  = "15001" // -p: outbound traffic is redirected here
	InboundCapturePort = "15006" // -z: inbound traffic is redirected here

	// validationFailedExitCode is what pilot-agent exits with when --run-validation finds
	// that redirection does not work (ValidationErrorCode in istio-iptables' constants).
	validationFailedExitCode = 126
)

// DefaultSidecarArgs returns the arguments (after `pilot-agent istio-iptables`) that istio-init receives from
// Istio's sidecar injector with default values and no annotations. They come from the
// injection template (manifests/charts/istio-control/istio-discovery/files/injection-template.yaml)
// of the pinned Istio version:
//
//	-p    meshConfig.proxyListenPort, default 15001
//	-z    meshConfig.proxyInboundListenPort, default 15006
//	-u    the proxy uid, 1337
//	-m    sidecar.istio.io/interceptionMode, default REDIRECT
//	-i    traffic.sidecar.istio.io/includeOutboundIPRanges, default "*"
//	-x    traffic.sidecar.istio.io/excludeOutboundIPRanges, default "" (an empty argument)
//	-b    traffic.sidecar.istio.io/includeInboundPorts, default "*"
//	-d    "15090,15021," + excludeInboundPorts with the status port 15020 appended
//	--log_output_level=default:info   sidecar.istio.io/agentLogLevel / global.logging.level
//
// The template adds -q, -o, -k, -c only when their annotations or values are set,
// --log_as_json with global.logAsJson, --native-nftables with global.nativeNftables, and
// --run-validation --skip-rule-apply instead (in the istio-validation container) with
// istio-cni. proxyMetadata from meshConfig.defaultConfig or the proxy.istio.io/config
// annotation reaches istio-init as environment variables (ISTIO_DUAL_STACK,
// ISTIO_META_DNS_CAPTURE, ...): pass those with IstioIptablesEnv.
func DefaultSidecarArgs() []string {
	return []string{
		"-p", OutboundProxyPort,
		"-z", InboundCapturePort,
		"-u", ProxyUID,
		"-m", "REDIRECT",
		"-i", "*",
		"-x", "",
		"-b", "*",
		"-d", "15090,15021,15020",
		"--log_output_level=default:info",
	}
}

// IstioIptables runs `pilot-agent istio-iptables ARGS` in the namespace the way istio-init does: as root
// holding only CAP_NET_ADMIN and CAP_NET_RAW (istio-init's securityContext drops ALL and adds
// those two), with a private xtables lock (istio-init has its own /run) and no environment
// beyond PATH. args are normally DefaultSidecarArgs, varied with e.g.
// "--force-iptables-binary", "legacy", or "--native-nftables", or "-m", "TPROXY".
func (n *Netns) IstioIptables(ctx context.Context, args ...string) error {
	return n.IstioIptablesEnv(ctx, nil, args...)
}

// IstioIptablesEnv is IstioIptables with environment variables, as istio-init receives
// proxyMetadata: e.g. "ISTIO_DUAL_STACK=true" makes Istio write IPv6 rules in a dual-stack pod,
// "ISTIO_META_DNS_CAPTURE=true" adds DNS capture.
func (n *Netns) IstioIptablesEnv(ctx context.Context, env []string, args ...string) error {
	pilotAgent, err := n.pilotAgentPath()
	if err != nil {
		return err
	}
	argv := append([]string{
		"--bounding-set", "-all,+net_admin,+net_raw",
		"--inh-caps", "-all",
		pilotAgent, "istio-iptables",
	}, args...)
	if _, err := n.exec(ctx, env, "setpriv", argv...); err != nil {
		return fmt.Errorf("pilot-agent in netns %s: %w", n.Name, err)
	}
	return nil
}

// Validate runs Istio's own check that redirection works, as the istio-validation init
// container does with istio-cni:
//
//	setpriv --reuid 1337 --regid 1337 --clear-groups pilot-agent istio-iptables --run-validation --skip-rule-apply
//
// ok is true when pilot-agent exits 0, false when it exits 126; anything else is an error.
// output is pilot-agent's log either way.
//
// What it can see: pilot-agent listens on 127.0.0.1:15001 and 127.0.0.1:15006 and, as uid
// 1337, connects from 127.0.0.1 to 127.0.0.6:15002 (from ::1 to [::6]:15002 when the first
// non-loopback address of the namespace is IPv6). It passes when either listener accepts a
// connection whose original destination port is 15002. That connection leaves through lo to a
// non-127.0.0.1 address as the proxy's uid, so the one path it proves is nat OUTPUT ->
// ISTIO_OUTPUT -> the `-o lo ! -d 127.0.0.1 --uid-owner 1337 -j ISTIO_IN_REDIRECT` rule (or
// its gid twin) -> REDIRECT to 15006 (or to 15001). It proves nothing about PREROUTING and
// ISTIO_INBOUND, the application's outbound path to ISTIO_REDIRECT, exclusions, or the second
// family of a dual-stack pod. Istio's default probe timeout is 5 s, so a failing Validate takes
// 5 s; ValidateWith(ctx, "--probe-timeout=1s") is quicker.
func (n *Netns) Validate(ctx context.Context) (ok bool, output string, err error) {
	return n.ValidateWith(ctx)
}

// ValidateWith is Validate with extra pilot-agent arguments, e.g. "--probe-timeout=1s", or
// "-p", "15101", "-z", "15106" when the rules were written with other ports.
func (n *Netns) ValidateWith(ctx context.Context, extraArgs ...string) (ok bool, output string, err error) {
	return n.ValidateAs(ctx, ProxyUID, extraArgs...)
}

// ValidateAs is ValidateWith as another proxy user (uid and gid alike), as istio-validation runs
// when the injector's proxy UID is not 1337; pass the same -u to pilot-agent in extraArgs.
func (n *Netns) ValidateAs(ctx context.Context, uid string, extraArgs ...string) (ok bool, output string, err error) {
	pilotAgent, err := n.pilotAgentPath()
	if err != nil {
		return false, "", err
	}
	argv := append([]string{
		"--reuid", uid, "--regid", uid, "--clear-groups",
		pilotAgent, "istio-iptables", "--run-validation", "--skip-rule-apply",
	}, extraArgs...)
	res, err := n.exec(ctx, nil, "setpriv", argv...)
	var execErr *ExecError
	switch {
	case err == nil:
		return true, string(res.combined), nil
	case errors.As(err, &execErr) && execErr.ExitCode() == validationFailedExitCode:
		return false, string(res.combined), nil
	default:
		return false, string(res.combined), fmt.Errorf("validation in netns %s: %w", n.Name, err)
	}
}

// pilotAgentPath resolves pilot-agent once per use: an explicit WithPilotAgent, else for a
// test the cache (skipping the test when it is missing), else the cache or an error.
func (n *Netns) pilotAgentPath() (string, error) {
	switch {
	case n.pilotAgent != "":
		return n.pilotAgent, nil
	case n.tb != nil:
		n.tb.Helper()
		return PilotAgent(n.tb), nil
	default:
		return FindPilotAgent()
	}
}
