// Package socketlb warns about BPF socket load balancers that rewrite a pod's connections before
// Istio's capture rules see them (SocketLBBeforeCapture).
//
// Cilium's socket LB (kube-proxy replacement) and Calico's connect-time load balancer (eBPF data
// plane) attach cgroup programs at connect and sendmsg that replace a Service's ClusterIP with
// one backend's address inside the connect(2) call itself. The pod's netfilter rules, Istio's
// redirect among them, then see a pod IP: the sidecar (or ztunnel) gets the connection as
// passthrough traffic to an unknown address, without the Service's routing, retries or
// policies (istio/istio#27619). Both vendors document a setting that keeps their programs out of
// pod namespaces; the programs stay attached either way (they skip pod namespaces at run time),
// so finding them is a note to check that setting (SeverityInfo), never proof of a broken
// capture: a correctly configured Cilium node has the same programs attached, and a warning on
// every pod of such a node would be a false alarm.
//
// Its reader of the node is nodecheck/cgroupbpf: the programs effective on the pod's cgroup,
// read with BPF_PROG_QUERY; nothing is loaded or attached.
package socketlb

import (
	"context"
	"fmt"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
)

// Check is the socket load balancer check.
type Check struct{}

// Name is the check's name in metrics and reports.
func (Check) Name() string { return "socket-lb" }

// Detail is what the check read, for the debug endpoint.
type Detail struct {
	// Cgroup is the pod's cgroup v2 directory read; empty when unknown.
	Cgroup string `json:"cgroup,omitempty"`
	// Programs are the connect, sendmsg, recvmsg and getpeername programs effective on it.
	Programs []cgroupbpf.Program `json:"programs,omitempty"`
	// NotRead says why the programs were not read (the pod's cgroup unknown, no permission).
	NotRead string `json:"notRead,omitempty"`
}

// Check reads the programs effective on the pod's cgroup and warns once when one of them runs at
// connect or sendmsg. It never fails the pod: when the programs cannot be read, the Detail says
// why and there is no finding.
func (Check) Check(ctx context.Context, t nodecheck.Target) (nodecheck.Result, error) {
	if t.SkipReason != "" {
		return nodecheck.Result{}, nil
	}
	if t.Cgroup == "" {
		why := "the pod's cgroup is unknown"
		switch {
		case t.CgroupError != "":
			why += ": " + t.CgroupError
		case t.SandboxID == "":
			why += ": a bare network namespace has no pod cgroup"
		}
		return nodecheck.Result{Detail: Detail{NotRead: why}}, nil
	}
	detail := Detail{Cgroup: t.Cgroup}
	progs, err := cgroupbpf.Effective(ctx, t.Cgroup, cgroupbpf.SocketLBAttachTypes())
	if err != nil {
		if ctx.Err() != nil {
			return nodecheck.Result{}, ctx.Err()
		}
		detail.NotRead = err.Error()
		return nodecheck.Result{Detail: detail}, nil
	}
	detail.Programs = progs
	res := nodecheck.Result{Detail: detail}
	if f, ok := finding(t.Cgroup, progs); ok {
		res.Findings = []nodecheck.Finding{f}
	}
	return res, nil
}

// finding is SocketLBBeforeCapture when a program rewrites at connect or sendmsg.
func finding(cgroup string, progs []cgroupbpf.Program) (nodecheck.Finding, bool) {
	var rewriting []cgroupbpf.Program
	var names []string
	for _, p := range progs {
		if !p.Rewrites {
			continue
		}
		rewriting = append(rewriting, p)
		names = append(names, fmt.Sprintf("%s (id %d, %s)", displayName(p), p.ID, p.AttachType))
	}
	if len(rewriting) == 0 {
		return nodecheck.Finding{}, false
	}
	cilium, calico := false, false
	for _, p := range rewriting {
		switch vendor(p.Name) {
		case "cilium":
			cilium = true
		case "calico":
			calico = true
		}
	}
	if !cilium && !calico {
		cilium, calico = true, true // unknown program: say both, the usual ones
	}
	var remedy []string
	if cilium {
		remedy = append(remedy, "Cilium: set the Helm value socketLB.hostNamespaceOnly=true (cilium-config "+
			"bpf-lb-sock-hostns-only: \"true\") so socket LB skips pod namespaces and Istio's rules see the ClusterIP, "+
			"then restart the cilium agents; check with `kubectl -n kube-system get cm cilium-config -o yaml | grep bpf-lb-sock-hostns`")
	}
	if calico {
		remedy = append(remedy, "Calico eBPF data plane: set FelixConfiguration bpfConnectTimeLoadBalancing: Disabled "+
			"(with bpfHostNetworkedNATWithoutCTLB: Enabled so host-networked clients still reach Services; older releases: "+
			"bpfConnectTimeLoadBalancingEnabled: false)")
	}
	return nodecheck.Finding{
		Code:     nodecheck.SocketLBBeforeCapture,
		Severity: nodecheck.SeverityInfo,
		Message: fmt.Sprintf("BPF programs at connect/sendmsg are effective on the pod's cgroup: %s. A socket load balancer "+
			"rewrites a Service's ClusterIP to a backend address inside connect(), before Istio's rules see the connection, "+
			"so the proxy gets it as passthrough traffic to a pod IP, unless the load balancer is configured to skip pod namespaces "+
			"(which its programs decide at run time: their being attached does not say which)",
			strings.Join(names, ", ")),
		Remedy:   strings.Join(remedy, "; "),
		Evidence: map[string]any{"cgroup": cgroup, "programs": rewriting},
	}, true
}

// vendor tells whose program it is by its name: Cilium's are cil_sock4_connect…, Calico's
// calico_connect_v4… (the kernel keeps the first 15 bytes).
func vendor(name string) string {
	switch {
	case strings.HasPrefix(name, "cil_"):
		return "cilium"
	case strings.HasPrefix(name, "calico"), strings.HasPrefix(name, "cali_"):
		return "calico"
	}
	return ""
}

func displayName(p cgroupbpf.Program) string {
	if p.Name == "" {
		return "unnamed program"
	}
	return p.Name
}
