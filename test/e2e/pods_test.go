package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// podScenario is a pod on a real containerd, created through CRI as kubelet creates it, whose
// istio-init is rendered as Istio's injection template renders it from the mesh values (the
// image's entrypoint pilot-agent, `istio-iptables` and the flags as args, proxyMetadata as env)
// and writes the pod's rules for real. meshdoctor discovers it and must judge it against that
// argv, since nothing else on the pod carries the mesh-wide values.
type podScenario struct {
	name   string
	values kubelet.MeshValues
	// edit changes the injected pod before it runs: istio-proxy's user, an annotation edited
	// after injection.
	edit func(p *kubelet.Pod)
	// breakIt damages the rules after the pod started, as something on the node would.
	breakIt func(ctx context.Context, n *testbed.Netns) error
	verdict nodecheck.Verdict
	codes   []nodecheck.Code
	intent  string
}

func podScenarios() []podScenario {
	meshWide := kubelet.DefaultMeshValues()
	meshWide.IncludeIPRanges, meshWide.ExcludeIPRanges = "10.0.0.0/8,172.16.0.0/12", "10.96.0.1/32"
	meshWide.IncludeInboundPorts, meshWide.ExcludeInboundPorts = "8080,9090", "8081"
	meshWide.IncludeOutboundPorts, meshWide.ExcludeOutboundPorts = "3306", "5432"
	openshift := kubelet.DefaultMeshValues()
	openshift.ProxyUID, openshift.ProxyGID = 1000650000, 1000650000
	dualStack := kubelet.DefaultMeshValues()
	dualStack.ProxyMetadata = map[string]string{"ISTIO_DUAL_STACK": "true"}
	nativeNft := kubelet.DefaultMeshValues()
	nativeNft.NativeNftables = true
	tproxy := kubelet.DefaultMeshValues()
	tproxy.InterceptionMode = istiopod.ModeTProxy
	initArgs := "init-args"
	return []podScenario{
		{name: "injected-defaults", values: kubelet.DefaultMeshValues(), verdict: nodecheck.VerdictOK, intent: initArgs},
		// Non-default mesh-wide ranges and ports are in istio-init's args only: no annotation
		// says them, and the pod is healthy.
		{name: "mesh-wide-values", values: meshWide, verdict: nodecheck.VerdictOK, intent: initArgs},
		// values.global.nativeNftables: --native-nftables in the args, no annotation.
		{name: "mesh-native-nftables", values: nativeNft, verdict: nodecheck.VerdictOK, intent: initArgs},
		// The mesh's default interception mode TPROXY: -m TPROXY in the args, and istio-proxy
		// runs as root with group 1337, as the template gives it.
		{name: "mesh-tproxy", values: tproxy, verdict: nodecheck.VerdictOK, intent: initArgs},
		// The injector's proxy UID (OpenShift's namespace range) in -u and on istio-proxy alike.
		{name: "injector-proxy-uid", values: openshift, verdict: nodecheck.VerdictOK, intent: initArgs},
		// istio-proxy runs as another user than istio-init's -u excluded (a pod-level runAsUser
		// overriding it): Envoy's own traffic would be captured again.
		{name: "proxy-uid-mismatch", values: kubelet.DefaultMeshValues(), intent: initArgs,
			edit: func(p *kubelet.Pod) {
				p.Containers[0].RunAsUser, p.Containers[0].RunAsGroup = kubelet.Int64(1338), kubelet.Int64(1338)
			},
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.ProxyUIDMismatch}},
		// Dual stack from proxyMetadata, which reaches istio-init as env only.
		{name: "dual-stack-env", values: dualStack, verdict: nodecheck.VerdictOK, intent: initArgs},
		{name: "dual-stack-env-ipv6-jumps-deleted", values: dualStack, intent: initArgs,
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				if err := n.DeleteRule(ctx, testbed.Nft, testbed.IPv6, "nat", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"); err != nil {
					return err
				}
				return n.DeleteRule(ctx, testbed.Nft, testbed.IPv6, "nat", "OUTPUT", "-j", "ISTIO_OUTPUT")
			},
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.RedirectRulesIncomplete}},
		// The proxy reports ready but Envoy has no listener behind the rules (a proxy configured
		// not to intercept while istio-init wrote the redirects): every rule reads right and
		// every redirected connection is refused.
		{name: "proxy-ready-without-listeners", values: kubelet.DefaultMeshValues(), intent: initArgs,
			edit: func(p *kubelet.Pod) {
				p.Containers[0].Env = map[string]string{"PROXY_STANDIN_LISTENERS": ""}
			},
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.CaptureTargetNotListening}},
		// A table of another owner untracks TCP arriving on eth0: every Istio rule reads right,
		// outbound is captured, and no connection from outside reaches the proxy. Only the SYN
		// the node sends to the pod's IP shows it.
		{name: "inbound-untracked-by-another-table", values: kubelet.DefaultMeshValues(), intent: initArgs,
			breakIt: func(ctx context.Context, n *testbed.Netns) error {
				return n.NftScript(ctx, "table inet other {\n chain pre {\n  type filter hook prerouting priority raw\n  iifname \"eth0\" meta l4proto tcp notrack\n }\n}")
			},
			verdict: nodecheck.VerdictBroken, codes: []nodecheck.Code{nodecheck.CaptureBypassed}},
		// An annotation added after injection: istio-init never saw it, the rules follow the
		// args, and the pod is healthy but told about it.
		{name: "annotation-edited-after-injection", values: kubelet.DefaultMeshValues(), intent: initArgs,
			edit: func(p *kubelet.Pod) {
				p.Annotations[istiopod.AnnotationExcludeOutboundCIDRs] = "10.96.0.0/12"
			},
			verdict: nodecheck.VerdictOK, codes: []nodecheck.Code{nodecheck.CaptureIntentDrift}},
	}
}

// podUID gives each scenario's pod a UID of its name, so that its golden report does not change.
func podUID(name string) string {
	h := fmt.Sprintf("%x", sha256.Sum256([]byte(name)))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// TestInjectedPods runs every pod scenario on one dual-stack test node, discovers them with one
// `meshdoctor check` through the containerd client and one through CRI, and compares each pod's
// report with its golden (testdata/pods/NAME.json). An annotation "edited after injection" is
// one the pod carries but istio-init's args were rendered without: what a later edit leaves.
func TestInjectedPods(t *testing.T) {
	node := kubelet.Start(t, testbed.WithDualStackPods())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	scs := podScenarios()
	pods := make([]*kubelet.RunningPod, len(scs))
	nets := make([]*testbed.Netns, len(scs))
	errs := make([]error, len(scs))
	var wg sync.WaitGroup
	for i, sc := range scs {
		p := kubelet.InjectedPodWith("e2e", sc.name, sc.values)
		p.UID = podUID(sc.name)
		if sc.edit != nil {
			sc.edit(&p)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pods[i], errs[i] = node.RunPod(ctx, p)
		}()
	}
	wg.Wait()
	for i, sc := range scs {
		if errs[i] != nil {
			t.Fatalf("%s: %v", sc.name, errs[i])
		}
		init := pods[i].InitContainers[0].Name
		if code := pods[i].ExitCodes[init]; code != 0 {
			t.Fatalf("%s: %s exited %d:\n%s", sc.name, init, code, node.Logs(pods[i], init))
		}
		nets[i] = testbed.AttachNetns(t, pods[i].Netns)
		// Every pod of the node is dual-stack, so IPv6 rules are expected only where the intent says so.
		if addrs, err := nets[i].Exec(ctx, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"); err != nil ||
			!strings.Contains(string(addrs), "fd00:10:88:") {
			t.Fatalf("%s: the pod has no IPv6 address from %s (%v): %s", sc.name, testbed.PodIPv6Subnet, err, addrs)
		}
		// The report must not depend on how fast the stand-in proxy came up.
		testbed.Eventually(t, 30*time.Second, sc.name+"'s istio-proxy ready", func() error {
			_, err := nets[i].Exec(ctx, "busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:15020/healthz/ready")
			return err
		})
		if sc.breakIt != nil {
			if err := sc.breakIt(ctx, nets[i]); err != nil {
				t.Fatalf("%s: breaking the rules: %v", sc.name, err)
			}
		}
	}
	// The node's side of the pods' bridge is the runtime's netns: the inbound canary is sent from
	// there, and leaves no trace there either.
	nets = append(nets, node.Containerd.Netns)
	before := traces(t, ctx, nets)

	nodeFlags := []string{"--cni-conf-dir", filepath.Join(node.Containerd.Dir, "net.d"), "--cni-bin-dir", "/usr/lib/cni",
		"--pod-log-dir", node.Containerd.PodLogDir, "--node-netns", node.Containerd.Netns.Path(),
		"--containerd-config", filepath.Join(node.Containerd.Dir, "config.toml")}
	rep, code, stderr := runMeshdoctor(t, ctx, append([]string{"--containerd-address", node.Containerd.Address}, nodeFlags...)...)
	// Through CRI, istio-init's argv and env come from the container's verbose status: the same
	// report, pod for pod.
	viaCRI, _, criStderr := runMeshdoctor(t, ctx, append([]string{"--cri-endpoint", "unix://" + node.Containerd.Address}, nodeFlags...)...)
	criPods := map[string]nodecheck.PodReport{}
	for _, p := range viaCRI.Pods {
		criPods[p.Namespace+"/"+p.Name] = p
	}

	for i, after := range traces(t, ctx, nets) {
		if d := before[i].Diff(after); d != "" && i < len(scs) {
			t.Errorf("%s: meshdoctor left a trace in the pod's namespace:\n%s", scs[i].name, d)
		} else if d != "" {
			t.Errorf("meshdoctor left a trace in the node's namespace (the runtime's, where the pods' bridge is):\n%s", d)
		}
	}
	// The test containerd's own config names the CNI config directory checked: no mismatch.
	for _, f := range rep.Findings {
		if strings.Contains(f.Message, "reads its CNI config from") {
			t.Errorf("the runtime's CNI config directory is not the one checked: %s", f.Message)
		}
	}
	wantExit := 0
	byName := map[string]nodecheck.PodReport{}
	for _, p := range rep.Pods {
		byName[p.Namespace+"/"+p.Name] = p
	}
	for i, sc := range scs {
		if sc.verdict == nodecheck.VerdictBroken {
			wantExit = 1
		}
		t.Run(sc.name, func(t *testing.T) {
			pod, ok := byName["e2e/"+sc.name]
			if !ok {
				t.Fatalf("pod not in the report; stderr:\n%s", stderr)
			}
			if pod.Verdict != sc.verdict {
				t.Errorf("verdict %s, want %s; findings: %s", pod.Verdict, sc.verdict, mustJSON(pod.Findings))
			}
			if pod.Capture.Intent != sc.intent {
				t.Errorf("capture.intent %q, want %q", pod.Capture.Intent, sc.intent)
			}
			var codes []nodecheck.Code
			for _, f := range pod.Findings {
				codes = append(codes, f.Code)
				if f.Message == "" || f.Remedy == "" || len(f.Evidence) == 0 {
					t.Errorf("finding %s lacks a message, remedy or evidence: %+v", f.Code, f)
				}
			}
			slices.Sort(codes)
			want := slices.Clone(sc.codes)
			slices.Sort(want)
			if !slices.Equal(codes, want) {
				t.Errorf("codes %v, want %v\nfindings: %s", codes, want, mustJSON(pod.Findings))
			}
			// Istio's own validation proves one path; where it fails, meshdoctor must say broken.
			// It runs as the user istio-init excluded, as istio-validation does.
			uid := initFlag(pods[i].InitContainers[0].Args, "-u")
			valid, out, err := nets[i].ValidateAs(ctx, uid, "-u", uid, "--probe-timeout=1s")
			if err != nil {
				t.Fatalf("Istio validation: %v\n%s", err, out)
			}
			if !valid && strings.Count(out, "bind: address already in use") == 2 {
				// Istio's validation runs before the proxy; run beside it, it can share the
				// proxy's ports only when both run as one user, and a TPROXY proxy runs as root.
				t.Logf("Istio's validation cannot run beside this pod's proxy (its ports are taken): no verdict to compare")
				valid = true
			}
			if !valid && pod.Verdict != nodecheck.VerdictBroken {
				t.Errorf("Istio's validation fails but meshdoctor says %s:\n%s", pod.Verdict, out)
			}
			goldenRep := podGolden(rep.Node, pod)
			golden(t, filepath.Join("pods", sc.name), goldenRep)
			if got := podGolden(viaCRI.Node, criPods["e2e/"+sc.name]); mustJSON(got) != mustJSON(goldenRep) {
				t.Errorf("through CRI the pod's report differs:\n%s\nstderr: %s", mustJSON(got), criStderr)
			}
		})
	}
	if code != wantExit {
		t.Errorf("exit status %d, want %d; stderr: %s", code, wantExit, stderr)
	}

	// The mesh-wide values are nowhere but in istio-init's argv: the same namespace checked bare
	// is judged by Istio's defaults and differs, and given that argv with --init-args it is ok.
	i := slices.IndexFunc(scs, func(sc podScenario) bool { return sc.name == "mesh-wide-values" })
	t.Run("mesh-wide-values-bare-netns", func(t *testing.T) {
		bare, _, stderr := runMeshdoctor(t, ctx, "--netns", pods[i].Netns)
		if len(bare.Pods) != 1 || bare.Pods[0].Verdict != nodecheck.VerdictBroken || bare.Pods[0].Capture.Intent != "defaults" ||
			!slices.ContainsFunc(bare.Pods[0].Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.RedirectRulesMismatch }) {
			t.Errorf("judged by Istio's defaults the mesh-wide values should differ:\n%s\nstderr: %s", mustJSON(bare.Pods), stderr)
		}
		argv := append([]string{"/usr/local/bin/pilot-agent"}, pods[i].InitContainers[0].Args...)
		byArgs, code, stderr := runMeshdoctor(t, ctx, "--netns", pods[i].Netns, "--init-args", mustJSON(argv))
		if len(byArgs.Pods) != 1 || byArgs.Pods[0].Verdict != nodecheck.VerdictOK || byArgs.Pods[0].Capture.Intent != "init-args" ||
			len(byArgs.Pods[0].Findings) != 0 || code != 0 {
			t.Errorf("judged by --init-args: exit %d\n%s\nstderr: %s", code, mustJSON(byArgs.Pods), stderr)
		}
	})
}

// initFlag is the value of a flag in an init container's args (the template writes "-u" "1337").
func initFlag(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func traces(t *testing.T, ctx context.Context, nets []*testbed.Netns) []testbed.Trace {
	t.Helper()
	out := make([]testbed.Trace, len(nets))
	for i, n := range nets {
		tr, err := n.Trace(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = tr
	}
	return out
}

// What differs from run to run in a discovered pod's report: the runtime's ids, the addresses
// the CNI leased, the times containers started, the source port a canary drew.
var (
	containerIDRE = regexp.MustCompile(`\b[0-9a-f]{64}\b`)
	bridgeIPv4RE  = regexp.MustCompile(`\b10\.88\.0\.1\b`) // the node's end of the pods' bridge
	canaryPortRE  = regexp.MustCompile(`(SYN [^ ]+):\d+ -`)
	podIPv4RE     = regexp.MustCompile(`\b10\.88\.\d+\.\d+\b`)
	podIPv6RE     = regexp.MustCompile(`fd00:10:88::[0-9a-f:]+`)
	timeRE        = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
)

// podGolden is one discovered pod as a report of its own, with what differs between runs
// replaced; node-level findings are left out (they are the host's, not the pod's).
func podGolden(node string, pod nodecheck.PodReport) nodecheck.Report {
	pod.Netns = "NETNS"
	for j := range pod.Checks {
		pod.Checks[j].Duration = 0
	}
	var p nodecheck.PodReport
	s := mustJSON(pod)
	s = containerIDRE.ReplaceAllString(s, "CONTAINER_ID")
	s = canaryPortRE.ReplaceAllString(s, "${1}:PORT -")
	s = bridgeIPv4RE.ReplaceAllString(s, "NODE_IPV4")
	s = podIPv4RE.ReplaceAllString(s, "POD_IPV4")
	s = podIPv6RE.ReplaceAllString(s, "POD_IPV6")
	s = timeRE.ReplaceAllString(s, "TIME")
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		panic(err)
	}
	return nodecheck.Report{Node: node, Pods: []nodecheck.PodReport{p}, Findings: []nodecheck.Finding{}}
}
