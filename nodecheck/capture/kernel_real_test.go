package capture_test

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/capture"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/nodecheck/netfilter"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules/nsread"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// A pod whose rules istio-init never wrote, in a real netns, on a node whose kernel (the test
// bed's own config, options switched off) lacks a feature: NetfilterFeatureMissing names it as the
// root cause when the pod's kind of capture needs it, and only then; rules that are there are
// never blamed on the kernel.
func TestKernelCauseOfMissingRules(t *testing.T) {
	testbed.RequirePrivileged(t)
	realConfig, err := os.ReadFile("../netfilter/testdata/config-6.18-firecracker.netfilter")
	if err != nil {
		t.Fatal(err)
	}
	kernelWithout := func(t *testing.T, opts ...string) netfilter.Reader {
		s := string(realConfig)
		for _, o := range opts {
			s = strings.ReplaceAll(s, "CONFIG_"+o+"=y\n", "# CONFIG_"+o+" is not set\n")
		}
		proc := t.TempDir()
		var gz bytes.Buffer
		w := gzip.NewWriter(&gz)
		w.Write([]byte(s))
		w.Close()
		must(t, os.MkdirAll(filepath.Join(proc, "sys/kernel"), 0o755))
		must(t, os.WriteFile(filepath.Join(proc, "sys/kernel/osrelease"), []byte("6.18.0-test\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(proc, "config.gz"), gz.Bytes(), 0o644))
		// An empty /sys: this machine's own /sys/module would show what the config says is missing.
		return netfilter.Reader{HostRoot: t.TempDir(), ProcDir: proc, SysDir: t.TempDir()}
	}
	sidecar := testbed.DefaultSidecarArgs()
	cases := []struct {
		name    string
		args    []string // istio-init's; nil for an ambient pod
		write   bool     // istio-init's rules are there
		node    rules.Backend
		without []string
		blamed  bool
	}{
		{name: "no REDIRECT, iptables-nft node", args: sidecar, node: rules.BackendNft, without: []string{"NETFILTER_XT_TARGET_REDIRECT"}, blamed: true},
		{name: "no REDIRECT, node backend unknown", args: sidecar, without: []string{"NETFILTER_XT_TARGET_REDIRECT"}, blamed: true},
		{name: "no nft_compat, legacy node", args: sidecar, node: rules.BackendLegacy, without: []string{"NFT_COMPAT"}},
		{name: "no nft_compat, iptables-nft node", args: sidecar, node: rules.BackendNft, without: []string{"NFT_COMPAT"}, blamed: true},
		{name: "no TPROXY, a REDIRECT pod", args: sidecar, without: []string{"NETFILTER_XT_TARGET_TPROXY"}},
		{name: "no TPROXY, a TPROXY pod", args: []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15020"},
			without: []string{"NETFILTER_XT_TARGET_TPROXY"}, blamed: true},
		{name: "no nft redirect, a native nftables pod", args: append(slices.Clone(sidecar), "--native-nftables"), without: []string{"NFT_REDIR"}, blamed: true},
		{name: "no nft redirect, an iptables pod", args: sidecar, without: []string{"NFT_REDIR"}},
		{name: "rules written, REDIRECT said missing", args: sidecar, write: true, without: []string{"NETFILTER_XT_TARGET_REDIRECT"}},
		{name: "ambient, no xt REDIRECT (istio-cni may write nftables)", without: []string{"NETFILTER_XT_TARGET_REDIRECT"}},
		{name: "ambient, no conntrack", without: []string{"NF_CONNTRACK"}, blamed: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			n := testbed.NewNetns(t)
			target := nodecheck.Target{Namespace: "shop", Name: "cart", Netns: n.Path(),
				Labels: map[string]string{istiopod.LabelDataplaneMode: "ambient"}}
			if c.args != nil {
				target.Labels = nil
				target.Annotations = map[string]string{istiopod.AnnotationSidecarStatus: "{}"}
				target.Containers = []nodecheck.Container{{Name: "istio-init", Role: nodecheck.RoleInit, State: nodecheck.ContainerExited,
					Args: append([]string{"istio-iptables"}, c.args...)}}
			}
			if c.write {
				must(t, n.IstioIptables(ctx, c.args...))
			}
			chk := &capture.Check{Reader: nsread.Reader{}, NodeBackend: c.node, Kernel: kernelWithout(t, c.without...)}
			res, err := chk.Check(ctx, target)
			if err != nil {
				t.Fatal(err)
			}
			var codes []nodecheck.Code
			var kernel *nodecheck.Finding
			for i, f := range res.Findings {
				codes = append(codes, f.Code)
				if f.Code == nodecheck.NetfilterFeatureMissing {
					kernel = &res.Findings[i]
				}
			}
			if (kernel != nil) != c.blamed {
				t.Fatalf("findings %v; want the kernel blamed: %v", codes, c.blamed)
			}
			if c.blamed && !c.write && !slices.Contains(codes, nodecheck.RedirectRulesMissing) {
				t.Errorf("findings %v lack RedirectRulesMissing", codes)
			}
			if kernel != nil && (kernel.Severity != nodecheck.SeverityError || kernel.Remedy == "" || kernel.Evidence["source"] == nil) {
				t.Errorf("the kernel finding lacks severity, remedy or evidence: %+v", kernel)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A pod injected for the Istio CNI plugin in a namespace istio-cni excludes has no rules in its
// real netns: RedirectRulesMissing says the exclusion is why, and the remedy is about it; the same
// pod outside an excluded namespace gets istio-cni's usual remedy.
func TestCNIModePodInAnExcludedNamespace(t *testing.T) {
	testbed.RequirePrivileged(t)
	n := testbed.NewNetns(t)
	for _, excluded := range []string{"istio-cni excludes namespace kube-system (exclude_namespaces in /etc/cni/net.d/10-calico.conflist)", ""} {
		target := nodecheck.Target{Namespace: "kube-system", Name: "dns", Netns: n.Path(), CNIMode: true, CNIExcluded: excluded,
			Annotations: map[string]string{istiopod.AnnotationSidecarStatus: `{"initContainers":["istio-validation"],"containers":["istio-proxy"]}`},
			Containers:  []nodecheck.Container{{Name: istiopod.ContainerIstioValidation, Role: nodecheck.RoleInit, State: nodecheck.ContainerExited}}}
		res, err := (&capture.Check{Reader: nsread.Reader{}}).Check(t.Context(), target)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(res.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.RedirectRulesMissing })
		if i < 0 {
			t.Fatalf("excluded %q: no RedirectRulesMissing in %+v", excluded, res.Findings)
		}
		f := res.Findings[i]
		names := strings.Contains(f.Message, "excludes namespace kube-system") && strings.Contains(f.Remedy, "cni.excludeNamespaces")
		if names != (excluded != "") {
			t.Errorf("excluded %q: the finding names the exclusion %v: %s / %s", excluded, names, f.Message, f.Remedy)
		}
	}
}

// On a multus node, a CNI-mode pod whose annotation does not attach istio-cni has no rules in its
// real netns: IstioCNINotInChain names why; the same pod with its rules written is not blamed.
func TestCNIModePodNotInMultusChain(t *testing.T) {
	testbed.RequirePrivileged(t)
	for _, written := range []bool{false, true} {
		n := testbed.NewNetns(t)
		if written {
			must(t, n.IstioIptables(t.Context(), testbed.DefaultSidecarArgs()...))
		}
		target := nodecheck.Target{Namespace: "shop", Name: "cart", Netns: n.Path(), CNIMode: true,
			CNINotInChain: "the node networks pods through multus (/etc/cni/net.d/00-multus.conf), and the pod has no k8s.v1.cni.cncf.io/networks annotation",
			Annotations:   map[string]string{istiopod.AnnotationSidecarStatus: `{"initContainers":["istio-validation"],"containers":["istio-proxy"]}`},
			Containers:    []nodecheck.Container{{Name: istiopod.ContainerIstioValidation, Role: nodecheck.RoleInit, State: nodecheck.ContainerExited}}}
		res, err := (&capture.Check{Reader: nsread.Reader{}}).Check(t.Context(), target)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(res.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.IstioCNINotInChain })
		if (i >= 0) == written {
			t.Fatalf("rules written %v: findings %+v", written, res.Findings)
		}
		if i >= 0 && (res.Findings[i].Severity != nodecheck.SeverityError || !strings.Contains(res.Findings[i].Message, "multus") || res.Findings[i].Remedy == "") {
			t.Errorf("the finding lacks its severity, reason or remedy: %+v", res.Findings[i])
		}
	}
}

// A CNI-mode pod without rules in its real netns, networked before the node's istio-cni-node came
// up, or in a window of the CNI chain's history without istio-cni: PodCreatedBeforeIstioCNI with
// the times; networked after it, outside the window, or with neither known, it is not said. Nor is
// it when another cause explains the missing rules (istio-cni excludes the pod's namespace, or
// multus does not attach istio-cni to it): then that cause alone is named.
func TestPodCreatedBeforeIstioCNI(t *testing.T) {
	testbed.RequirePrivileged(t)
	n := testbed.NewNetns(t)
	created := time.Date(2026, 12, 7, 10, 0, 1, 0, time.UTC)
	gap := &nodecheck.CNIChainGap{From: created.Add(-time.Minute), Until: created.Add(time.Minute),
		Primary: "/etc/cni/net.d/05-cilium.conflist", Source: "inotify"}
	for _, c := range []struct {
		name     string
		istioCNI time.Time
		gap      *nodecheck.CNIChainGap
		want     []string // in the message; nil: no finding
		evidence string
		excluded string         // Target.CNIExcluded
		notChain string         // Target.CNINotInChain
		instead  nodecheck.Code // the cause named instead, when want is nil
	}{
		{"before istio-cni-node came up", created.Add(4 * time.Second), nil, []string{"2026-12-07T10:00:01Z", "2026-12-07T10:00:05Z"}, "istioCNIStartedAt", "", "", ""},
		{"after istio-cni-node came up", created.Add(-time.Minute), nil, nil, "", "", "", ""},
		{"neither known", time.Time{}, nil, nil, "", "", "", ""},
		{"in a chain gap", created.Add(-time.Hour), gap,
			[]string{"05-cilium.conflist did not chain it from 2026-12-07T09:59:01Z until 2026-12-07T10:01:01Z", "seen by meshdoctor's agent"}, "chainGap", "", "", ""},
		{"in a gap still open, known from mtimes", time.Time{}, &nodecheck.CNIChainGap{From: created.Add(-time.Second), Source: "mtime"},
			[]string{"the CNI config in use did not chain it from 2026-12-07T10:00:00Z and still does not", "modification times"}, "chainGap", "", "", ""},
		{name: "before istio-cni-node came up, in a namespace istio-cni excludes", istioCNI: created.Add(4 * time.Second),
			excluded: "istio-cni excludes namespace shop (exclude_namespaces in /etc/cni/net.d/10-calico.conflist)", instead: nodecheck.RedirectRulesMissing},
		{name: "in a chain gap, in a namespace istio-cni excludes", gap: gap,
			excluded: "istio-cni excludes namespace shop (exclude_namespaces in /etc/cni/net.d/10-calico.conflist)", instead: nodecheck.RedirectRulesMissing},
		{name: "before istio-cni-node came up, not attached by multus", istioCNI: created.Add(4 * time.Second),
			notChain: "the node networks pods through multus (/etc/cni/net.d/00-multus.conf), and the pod has no k8s.v1.cni.cncf.io/networks annotation",
			instead:  nodecheck.IstioCNINotInChain},
		{name: "in a chain gap, not attached by multus", gap: gap,
			notChain: "the node networks pods through multus (/etc/cni/net.d/00-multus.conf), and the pod has no k8s.v1.cni.cncf.io/networks annotation",
			instead:  nodecheck.IstioCNINotInChain},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := nodecheck.Target{Namespace: "shop", Name: "cart", Netns: n.Path(), CNIMode: true, IstioCNIStartedAt: c.istioCNI, CNIChainGap: c.gap,
				CNIExcluded: c.excluded, CNINotInChain: c.notChain,
				Annotations: map[string]string{istiopod.AnnotationSidecarStatus: `{"initContainers":["istio-validation"],"containers":["istio-proxy"]}`},
				Containers: []nodecheck.Container{{Name: istiopod.ContainerIstioValidation, Role: nodecheck.RoleInit, State: nodecheck.ContainerExited,
					CreatedAt: created}}}
			res, err := (&capture.Check{Reader: nsread.Reader{}}).Check(t.Context(), target)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(res.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.PodCreatedBeforeIstioCNI })
			if (i >= 0) != (c.want != nil) {
				t.Fatalf("findings %+v", res.Findings)
			}
			if i < 0 {
				if c.instead != "" && !slices.ContainsFunc(res.Findings, func(f nodecheck.Finding) bool { return f.Code == c.instead }) {
					t.Errorf("findings %+v lack %s, the cause named instead", res.Findings, c.instead)
				}
				if c.excluded != "" && !slices.ContainsFunc(res.Findings, func(f nodecheck.Finding) bool { return strings.Contains(f.Message, "excludes namespace shop") }) {
					t.Errorf("no finding names the exclusion: %+v", res.Findings)
				}
				return
			}
			f := res.Findings[i]
			for _, w := range c.want {
				if !strings.Contains(f.Message, w) {
					t.Errorf("message lacks %q: %s", w, f.Message)
				}
			}
			if f.Evidence[c.evidence] == nil || f.Evidence["podNetworkedAt"] == nil || f.Severity != nodecheck.SeverityError {
				t.Errorf("the finding lacks %s: %+v", c.evidence, f)
			}
		})
	}
}
