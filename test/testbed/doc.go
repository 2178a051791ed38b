// Package testbed is meshdoctor's real test bed for traffic capture: throwaway network
// namespaces on the test machine in which Istio's own code writes and validates its redirect
// rules, so that meshdoctor's readers and checks are tested against what Istio really produces
// and not against what we believe it produces.
//
// A test typically does:
//
//	ns := testbed.NewNetns(t)                       // skips unless root (fails in CI)
//	ns.IstioIptables(ctx, testbed.DefaultSidecarArgs()...) // what istio-init runs
//	ok, _, _ := ns.Validate(ctx)                    // what istio-validation runs: ground truth
//	before, _ := ns.Trace(ctx)
//	... run a meshdoctor reader against ns.Path() ...
//	after, _ := ns.Trace(ctx)                       // the reader must leave no trace
//	if d := before.Diff(after); d != "" { t.Error(d) }
//
// Broken pods are made with the real tools inside the namespace (Iptables, DeleteRule,
// FlushChain, ReplaceRule, Nft), never by editing captured text.
//
// Everything here runs real binaries: ip (iproute2), iptables-nft/-legacy, nft, setpriv, and
// Istio's pilot-agent built by test/setup.sh from a pinned Istio source version. Tests that
// need privileges skip when run unprivileged, and fail instead when CI=true, because the
// privileged tests are the point of the test bed and must never be skipped silently in CI.
//
// The package depends on nothing beyond the standard library so that any package's tests can
// import it.
package testbed
