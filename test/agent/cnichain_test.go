package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// cniModePod is a pod injected for the Istio CNI plugin: istio-validation instead of istio-init.
// No istio-cni runs on the test bed, so its rules are never written.
func cniModePod(name string) kubelet.Pod {
	return kubelet.Pod{Namespace: "shop", Name: name,
		Annotations:    map[string]string{istiopod.AnnotationSidecarStatus: kubelet.SidecarStatus(istiopod.ContainerIstioValidation)},
		InitContainers: []kubelet.Container{kubelet.IstioValidation()},
		Containers:     []kubelet.Container{kubelet.IstioProxy(), kubelet.App()}}
}

func copyConf(t *testing.T, from, dir, name string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "."+name+".tmp") // as CNI installers write: a temporary file, renamed
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// nodeTimeline reads the CNI chain's timeline from the agent's /debug/node.
func nodeTimeline(t *testing.T, debug string) []cnichain.Change {
	t.Helper()
	_, body, err := testbed.HTTPGet(debug + "/debug/node")
	if err != nil {
		t.Fatal(err)
	}
	var node struct {
		Details map[string]struct {
			ChainTimeline []cnichain.Change `json:"chainTimeline"`
		} `json:"details"`
	}
	if err := json.Unmarshal([]byte(body), &node); err != nil {
		t.Fatalf("/debug/node: %v\n%s", err, body)
	}
	return node.Details["istio-cni"].ChainTimeline
}

// The agent watches the CNI config directory while another CNI writes its config in front of
// istio-cni's chain (as Cilium with cni.exclusive does) and takes it away again. A real CRI pod
// networked in that window is PodCreatedBeforeIstioCNI, dated by the window the watch saw; one
// networked after istio-cni is back in the chain is missing its rules too (no istio-cni runs
// here) but is not blamed on the window. /debug/node shows the timeline.
func TestAgentDatesPodsAgainstTheCNIChain(t *testing.T) {
	node := kubelet.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	confDir := t.TempDir()
	const fixtures = "../../nodecheck/istiocni/testdata"
	copyConf(t, fixtures+"/complete/root/etc/cni/net.d/10-containerd-net.conflist", confDir, "10-containerd-net.conflist")
	a := startAgent(t, "--kubeconfig=none", "--containerd-address", node.Containerd.Address,
		"--recheck-interval", "1h", "--debounce", "200ms", "--cni-conf-dir", confDir)

	lastChain := func(want cnichain.Chain) func() error {
		return func() error {
			tl := nodeTimeline(t, a.debug)
			if len(tl) == 0 || tl[len(tl)-1].Chain != want {
				return fmt.Errorf("timeline %+v", tl)
			}
			return nil
		}
	}
	testbed.Eventually(t, 30*time.Second, "the watch started on the chained config", lastChain(cnichain.Chained))

	copyConf(t, fixtures+"/chained-in-unused-file/root/etc/cni/net.d/05-cilium.conflist", confDir, "05-cilium.conflist")
	took := testbed.Eventually(t, 10*time.Second, "the rewrite seen", lastChain(cnichain.Unchained))
	t.Logf("another CNI's config written → on /debug/node in %s", took.Round(time.Millisecond))
	beforeRun := time.Now()
	if _, err := node.RunPod(ctx, cniModePod("in-window")); err != nil {
		t.Fatal(err)
	}
	afterRun := time.Now()
	if err := os.Remove(filepath.Join(confDir, "05-cilium.conflist")); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "istio-cni back in the chain", lastChain(cnichain.Chained))
	if _, err := node.RunPod(ctx, cniModePod("after-window")); err != nil {
		t.Fatal(err)
	}

	codes := func(rep nodecheck.Report, name string) (*nodecheck.PodReport, []nodecheck.Code) {
		for i, p := range rep.Pods {
			if p.Name == name {
				var cs []nodecheck.Code
				for _, f := range p.Findings {
					cs = append(cs, f.Code)
				}
				return &rep.Pods[i], cs
			}
		}
		return nil, nil
	}
	var blamed nodecheck.Finding
	testbed.Eventually(t, time.Minute, "both pods judged", func() error {
		rep := report(t, a.debug)
		in, inCodes := codes(rep, "in-window")
		after, afterCodes := codes(rep, "after-window")
		if in == nil || after == nil || !slices.Contains(inCodes, nodecheck.RedirectRulesMissing) || !slices.Contains(afterCodes, nodecheck.RedirectRulesMissing) {
			return fmt.Errorf("in-window %v, after-window %v", inCodes, afterCodes)
		}
		if !slices.Contains(inCodes, nodecheck.PodCreatedBeforeIstioCNI) {
			return fmt.Errorf("in-window not dated against the chain: %v", inCodes)
		}
		if slices.Contains(afterCodes, nodecheck.PodCreatedBeforeIstioCNI) {
			t.Fatalf("a pod networked after istio-cni was back in the chain is blamed on the window: %+v", after.Findings)
		}
		blamed = in.Findings[slices.IndexFunc(in.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.PodCreatedBeforeIstioCNI })]
		return nil
	})
	tl := nodeTimeline(t, a.debug)
	var gap nodecheck.CNIChainGap
	raw, _ := json.Marshal(blamed.Evidence["chainGap"])
	if err := json.Unmarshal(raw, &gap); err != nil || gap.Source != "inotify" || filepath.Base(gap.Primary) != "05-cilium.conflist" ||
		gap.Until.IsZero() || gap.From.After(gap.Until) {
		t.Fatalf("evidence %s (%v); timeline %+v", raw, err, tl)
	}
	if gap.From.After(beforeRun) || gap.Until.Before(afterRun) {
		t.Errorf("the pod was networked between %s and %s, outside the window it is blamed on %+v", beforeRun, afterRun, gap)
	}
	t.Logf("timeline: %+v\nfinding: %s", tl, blamed.Message)
	// The metrics count what the report says: the new code has a series that is not zero.
	const series = `meshdoctor_findings{code="PodCreatedBeforeIstioCNI"}`
	testbed.Eventually(t, 10*time.Second, series+" counted", func() error {
		if v := metric(t, a.metrics, series); v < 1 {
			return fmt.Errorf("%s = %v, want at least 1", series, v)
		}
		return nil
	})
	a.stop(t)

	// No agent: `check` rebuilds from modification times what they prove. Another CNI's config
	// is written again and a third pod networked after it: that one is dated against the file's
	// write; the first, networked in a window the files no longer show, is not blamed on a guess.
	copyConf(t, fixtures+"/chained-in-unused-file/root/etc/cni/net.d/05-cilium.conflist", confDir, "05-cilium.conflist")
	time.Sleep(20 * time.Millisecond) // a container created after the write, on any clock granularity
	if _, err := node.RunPod(ctx, cniModePod("after-rewrite")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, binary, "check", "-o", "json", "--containerd-address", node.Containerd.Address,
		"--cni-conf-dir", confDir, "--containerd-config", "none")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var rep nodecheck.Report
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("check: %v (%v)\n%s\nstderr:\n%s", jerr, err, out, stderr.String())
	}
	_, inCodes := codes(rep, "in-window")
	after, afterCodes := codes(rep, "after-rewrite")
	if slices.Contains(inCodes, nodecheck.PodCreatedBeforeIstioCNI) || !slices.Contains(afterCodes, nodecheck.PodCreatedBeforeIstioCNI) {
		t.Fatalf("check from modification times: in-window %v, after-rewrite %v", inCodes, afterCodes)
	}
	for _, f := range after.Findings {
		if f.Code == nodecheck.PodCreatedBeforeIstioCNI && !strings.Contains(f.Message, "modification times") {
			t.Errorf("check's finding does not say how it knows: %s", f.Message)
		}
	}
}
