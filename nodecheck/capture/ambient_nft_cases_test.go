package capture_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// ambientNftDir holds, per scenario, what meshdoctor's reader saw in a namespace after
// istio-cni's native nftables writer ran there (snapshot.json, written by
// `go test -run TestAmbientNftablesFromIstiosWriter -capture-ambient-nft` as root), the
// human-readable `nft list ruleset` and `ip rule` beside it, and the check's expected result
// (want.json, rewritten by `go test -run TestAmbientNftablesGolden -update`).
const ambientNftDir = "testdata/ambient-native-nftables"

// ambientNftCase is one ambient pod whose in-pod rules istio-cni writes with native nftables.
type ambientNftCase struct {
	name        string
	opts        []testbed.Option
	args        []string // ambient-inpod flags besides --native-nftables; nil: the writer never ran
	annotations map[string]string
	breakIt     []string // a command run in the namespace after the writer (nft or ip)
	// Once the writer ran, a stand-in ztunnel listens in the pod, less the sockets in
	// ztunnelWithout, unless noZtunnel (ztunnel lost the pod).
	noZtunnel      bool
	ztunnelWithout []string
	codes          []nodecheck.Code
	contains       string
}

func ambientEnrolled(extra map[string]string) map[string]string {
	out := map[string]string{istiopod.AnnotationAmbientRedirection: "enabled"}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// ambientNftCases: healthy pods in each configuration, IPv4-only and dual-stack, the ways a
// node damages them, and ztunnel losing the pod while its rules stay. The same table drives the privileged test, which writes and reads real
// rules, and the golden test, which replays what the privileged test stored.
func ambientNftCases() []ambientNftCase {
	v4 := []testbed.Option{testbed.IPv4Only()}
	incomplete := []nodecheck.Code{nodecheck.RedirectRulesIncomplete}
	return []ambientNftCase{
		{name: "healthy-dual-stack", args: []string{}, annotations: ambientEnrolled(nil)},
		{name: "healthy-ipv4-only", opts: v4, args: []string{"--ipv6=false"}, annotations: ambientEnrolled(nil)},
		{name: "healthy-ipv4-only-pod-ipv6-writer", opts: v4, args: []string{}, annotations: ambientEnrolled(nil)},
		{name: "healthy-dns-off-globally", args: []string{"--dns=false"}, annotations: ambientEnrolled(nil), ztunnelWithout: dnsSockets},
		{name: "healthy-dns-off-for-the-pod", args: []string{"--dns=false"}, ztunnelWithout: dnsSockets,
			annotations: ambientEnrolled(map[string]string{istiopod.AnnotationAmbientDNSCapture: "false"})},
		{name: "healthy-ingress", args: []string{"--ingress"},
			annotations: ambientEnrolled(map[string]string{istiopod.AnnotationAmbientBypassInbound: "true"})},
		{name: "healthy-virtual-interfaces", args: []string{"--virtual-interfaces=eth0peer"},
			annotations: ambientEnrolled(map[string]string{istiopod.AnnotationRerouteInterfaces: "eth0peer"})},
		{name: "nat-table-flushed-dual-stack", args: []string{}, annotations: ambientEnrolled(nil),
			breakIt: []string{"nft", "flush", "table", "inet", "istio-ambient-nat"},
			codes:   incomplete, contains: "ipv6 native-nftables nat/ISTIO_OUTPUT: chain empty"},
		{name: "nat-table-flushed-ipv4-only", opts: v4, args: []string{"--ipv6=false"}, annotations: ambientEnrolled(nil),
			breakIt: []string{"nft", "flush", "table", "inet", "istio-ambient-nat"},
			codes:   incomplete, contains: "ipv4 native-nftables nat/ISTIO_OUTPUT: chain empty"},
		{name: "nat-table-deleted", args: []string{}, annotations: ambientEnrolled(nil),
			breakIt: []string{"nft", "delete", "table", "inet", "istio-ambient-nat"},
			codes:   incomplete, contains: "nat/ISTIO_PREROUTING: chain absent"},
		{name: "mangle-table-deleted-ipv4-only", opts: v4, args: []string{"--ipv6=false"}, annotations: ambientEnrolled(nil),
			breakIt: []string{"nft", "delete", "table", "inet", "istio-ambient-mangle"},
			codes:   incomplete, contains: "mangle/ISTIO_PREROUTING: chain absent"},
		{name: "policy-routing-removed", args: []string{}, annotations: ambientEnrolled(nil),
			breakIt: []string{"ip", "rule", "del", "fwmark", "0x111/0xfff", "lookup", "100"},
			codes:   incomplete, contains: "fwmark 0x111/0xfff"},
		{name: "written-for-ingress-pod-not-in-it", args: []string{"--ingress"}, annotations: ambientEnrolled(nil),
			codes: incomplete, contains: "nat/ISTIO_PREROUTING"},
		{name: "ghost-enrollment", args: []string{}, annotations: ambientEnrolled(nil), noZtunnel: true,
			codes: []nodecheck.Code{nodecheck.CaptureTargetNotListening}, contains: "ghost enrollment"},
		{name: "dns-listener-gone-ipv4-only", opts: v4, args: []string{"--ipv6=false"}, ztunnelWithout: dnsSockets,
			annotations: ambientEnrolled(map[string]string{istiopod.AnnotationAmbientDNSCapture: "true"}),
			codes:       []nodecheck.Code{nodecheck.CaptureTargetNotListening}, contains: "tcp/15053, udp/15053"},
		{name: "never-written", annotations: ambientEnrolled(nil),
			codes: []nodecheck.Code{nodecheck.RedirectRulesMissing}, contains: "istio-cni node agent"},
	}
}

// storedSnapshot is a rules.Snapshot as meshdoctor's real reader returned it, in a form that
// replays exactly: each rule set in iptables-save syntax (rules.RuleSet.Save, which
// rules.ParseSave reads back to the same rules) with where each table was read.
type storedSnapshot struct {
	Writer    string           `json:"writer"`
	Addrs     []netip.Addr     `json:"addrs"`
	Routing   []storedRoute    `json:"routing"`
	Listeners []rules.Listener `json:"listeners"`
	Sets      []storedSet      `json:"sets"`
}

type storedRoute struct {
	Family rules.Family `json:"family"`
	rules.MarkRoute
}

type storedSet struct {
	Backend rules.Backend `json:"backend"`
	Family  rules.Family  `json:"family"`
	// Origins maps each table to where it was read ("inet istio-ambient-nat").
	Origins map[string]string `json:"origins"`
	// Save is the set in iptables-save syntax, a line per element, so a diff reads like one.
	Save []string `json:"save"`
}

func storeSnapshot(snap rules.Snapshot, writer string) (storedSnapshot, error) {
	out := storedSnapshot{Writer: writer, Addrs: snap.Addrs, Listeners: snap.Listeners}
	for _, r := range snap.Routing {
		out.Routing = append(out.Routing, storedRoute{Family: r.Family, MarkRoute: r})
	}
	for _, s := range snap.Sets {
		st := storedSet{Backend: s.Backend, Family: s.Family, Origins: map[string]string{}, Save: saveLines(s.Save())}
		for _, t := range s.Tables {
			st.Origins[t.Name] = t.Origin
		}
		out.Sets = append(out.Sets, st)
	}
	// What is stored must be what was read, or the golden test would judge something else.
	back, err := out.snapshot()
	if err != nil {
		return out, err
	}
	for i, s := range back.Sets {
		if got, want := s.Save(), snap.Sets[i].Save(); got != want {
			return out, fmt.Errorf("%s %s does not survive iptables-save syntax:\n%s\nreads back as\n%s", s.Backend, s.Family, want, got)
		}
	}
	return out, nil
}

func (s storedSnapshot) snapshot() (rules.Snapshot, error) {
	snap := rules.Snapshot{Addrs: s.Addrs, Listeners: s.Listeners}
	for _, r := range s.Routing {
		mr := r.MarkRoute
		mr.Family = r.Family
		snap.Routing = append(snap.Routing, mr)
	}
	for _, st := range s.Sets {
		set, err := rules.ParseSave(strings.NewReader(strings.Join(st.Save, "\n")+"\n"), st.Backend, st.Family)
		if err != nil {
			return snap, fmt.Errorf("%s %s: %w", st.Backend, st.Family, err)
		}
		for _, t := range set.Tables {
			if o, ok := st.Origins[t.Name]; ok {
				t.Origin = o
			}
		}
		snap.Sets = append(snap.Sets, set)
	}
	return snap, nil
}

// storedReader replays a stored snapshot as the capture check's RuleReader.
type storedReader struct{ snap rules.Snapshot }

func (r storedReader) ReadRules(context.Context, string) (rules.Snapshot, error) { return r.snap, nil }

func loadStoredSnapshot(name string) (rules.Snapshot, error) {
	data, err := os.ReadFile(filepath.Join(ambientNftDir, name, "snapshot.json"))
	if err != nil {
		return rules.Snapshot{}, err
	}
	var s storedSnapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return rules.Snapshot{}, fmt.Errorf("%s: %w", name, err)
	}
	return s.snapshot()
}

func saveLines(save string) []string {
	if save == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(save, "\n"), "\n")
}

func codesOf(fs []nodecheck.Finding) []nodecheck.Code {
	var out []nodecheck.Code
	for _, f := range fs {
		out = append(out, f.Code)
	}
	return out
}
