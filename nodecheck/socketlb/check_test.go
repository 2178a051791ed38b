package socketlb_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf"
	"github.com/meshdoctor/meshdoctor/nodecheck/cgroupbpf/cgroupbpftest"
	"github.com/meshdoctor/meshdoctor/nodecheck/socketlb"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// onlyTest keeps the test's own programs: the node's (if any) are effective on test cgroups too.
func onlyTest(progs []cgroupbpf.Program, ids ...uint32) []cgroupbpf.Program {
	return slices.DeleteFunc(slices.Clone(progs), func(p cgroupbpf.Program) bool { return !slices.Contains(ids, p.ID) })
}

// Real programs on a parent cgroup: a connect program (Cilium's name, Calico's, an unknown one)
// makes one SocketLBBeforeCapture note (info) on the child with the program in evidence and the
// vendor's remedy; a recvmsg program alone rewrites nothing; no program, no finding; an unknown
// cgroup, a skipped pod and a cgroup gone are no finding with the reason in the Detail.
func TestCheckRealPrograms(t *testing.T) {
	testbed.RequirePrivileged(t)
	type attach struct {
		at   cgroupbpf.AttachType
		name string
	}
	for _, tc := range []struct {
		name       string
		attach     []attach
		target     func(child string) nodecheck.Target
		wantNames  []string // programs in the finding's evidence; nil: no finding
		wantRemedy []string
		notRemedy  []string
		notRead    string
	}{
		{name: "cilium socket LB", attach: []attach{{cgroupbpf.Inet4Connect, "cil_sock4_conne"}, {cgroupbpf.UDP4Recvmsg, "cil_sock4_recvm"}},
			wantNames: []string{"cil_sock4_conne"}, wantRemedy: []string{"socketLB.hostNamespaceOnly=true"}, notRemedy: []string{"bpfConnectTimeLoadBalancing"}},
		{name: "calico connect-time LB", attach: []attach{{cgroupbpf.Inet6Connect, "calico_connect_"}, {cgroupbpf.UDP6Sendmsg, "calico_sendmsg_"}},
			wantNames: []string{"calico_connect_", "calico_sendmsg_"}, wantRemedy: []string{"bpfConnectTimeLoadBalancing: Disabled"}, notRemedy: []string{"socketLB"}},
		{name: "unknown program", attach: []attach{{cgroupbpf.Inet4Connect, "md_test_lb"}},
			wantNames: []string{"md_test_lb"}, wantRemedy: []string{"socketLB.hostNamespaceOnly=true", "bpfConnectTimeLoadBalancing"}},
		{name: "recvmsg alone rewrites nothing", attach: []attach{{cgroupbpf.UDP4Recvmsg, "md_test_rev"}}},
		{name: "no program"},
		{name: "cgroup unknown", attach: []attach{{cgroupbpf.Inet4Connect, "md_test_lb"}},
			target: func(string) nodecheck.Target {
				return nodecheck.Target{Namespace: "shop", Name: "cart", SandboxID: "abc", CgroupError: "no cgroup v2 hierarchy"}
			},
			notRead: "the pod's cgroup is unknown: no cgroup v2 hierarchy"},
		{name: "bare netns", attach: []attach{{cgroupbpf.Inet4Connect, "md_test_lb"}},
			target:  func(string) nodecheck.Target { return nodecheck.Target{Netns: "/var/run/netns/x"} },
			notRead: "a bare network namespace has no pod cgroup"},
		{name: "pod not meant to be captured", attach: []attach{{cgroupbpf.Inet4Connect, "md_test_lb"}},
			target: func(child string) nodecheck.Target {
				return nodecheck.Target{Name: "plain", SandboxID: "abc", Cgroup: child, SkipReason: "no sidecar"}
			}},
		{name: "cgroup gone", attach: []attach{{cgroupbpf.Inet4Connect, "md_test_lb"}},
			target: func(child string) nodecheck.Target {
				return nodecheck.Target{Name: "gone", SandboxID: "abc", Cgroup: child + "/gone"}
			},
			notRead: "no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := cgroupbpftest.NewCgroup(t, "")
			child := cgroupbpftest.NewCgroup(t, parent)
			var ids []uint32
			for _, a := range tc.attach {
				ids = append(ids, cgroupbpftest.AttachSockAddr(t, parent, a.at, a.name).ID)
			}
			target := nodecheck.Target{Namespace: "shop", Name: "cart", SandboxID: "abc", Cgroup: child}
			if tc.target != nil {
				target = tc.target(child)
			}
			res, err := socketlb.Check{}.Check(t.Context(), target)
			if err != nil {
				t.Fatal(err)
			}
			var mine []nodecheck.Finding
			for _, f := range res.Findings {
				progs := onlyTest(f.Evidence["programs"].([]cgroupbpf.Program), ids...)
				if len(progs) > 0 {
					mine = append(mine, f)
				}
			}
			if tc.wantNames == nil {
				if len(mine) > 0 {
					t.Errorf("findings %+v, want none", mine)
				}
			} else {
				if len(mine) != 1 {
					t.Fatalf("findings %+v, want one SocketLBBeforeCapture", res.Findings)
				}
				f := mine[0]
				if f.Code != nodecheck.SocketLBBeforeCapture || f.Severity != nodecheck.SeverityInfo {
					t.Errorf("finding %s %s, want SocketLBBeforeCapture info", f.Code, f.Severity)
				}
				var names []string
				for _, p := range onlyTest(f.Evidence["programs"].([]cgroupbpf.Program), ids...) {
					names = append(names, p.Name)
					if p.AttachedAt != parent || p.Type != "cgroup_sock_addr" || !p.Rewrites {
						t.Errorf("program in evidence %+v: want a rewriting cgroup_sock_addr program attached at %s", p, parent)
					}
				}
				if !slices.Equal(names, tc.wantNames) {
					t.Errorf("programs in evidence %v, want %v", names, tc.wantNames)
				}
				if f.Evidence["cgroup"] != child {
					t.Errorf("evidence cgroup %v, want %s", f.Evidence["cgroup"], child)
				}
				for _, n := range tc.wantNames {
					if !strings.Contains(f.Message, n) {
						t.Errorf("message does not name %s: %s", n, f.Message)
					}
				}
				for _, s := range tc.wantRemedy {
					if !strings.Contains(f.Remedy, s) {
						t.Errorf("remedy lacks %q: %s", s, f.Remedy)
					}
				}
				for _, s := range tc.notRemedy {
					if strings.Contains(f.Remedy, s) {
						t.Errorf("remedy names %q for another vendor's program: %s", s, f.Remedy)
					}
				}
			}
			if target.SkipReason != "" {
				if res.Detail != nil || len(res.Findings) > 0 {
					t.Errorf("a skipped pod: result %+v, want nothing", res)
				}
				return
			}
			d, _ := res.Detail.(socketlb.Detail)
			if tc.notRead == "" {
				if d.NotRead != "" {
					t.Errorf("detail says not read: %s", d.NotRead)
				}
				if len(onlyTest(d.Programs, ids...)) != len(tc.attach) {
					t.Errorf("detail programs %+v, want the %d attached", d.Programs, len(tc.attach))
				}
			} else if !strings.Contains(d.NotRead, tc.notRead) {
				t.Errorf("detail NotRead %q, want it to say %q", d.NotRead, tc.notRead)
			}
		})
	}
}

// The check leaves every attachment as it was: the program ids at every socket LB attach point
// of the pod's cgroup, its parent and the top of the hierarchy are the same before and after.
func TestCheckIsReadOnly(t *testing.T) {
	testbed.RequirePrivileged(t)
	parent := cgroupbpftest.NewCgroup(t, "")
	child := cgroupbpftest.NewCgroup(t, parent)
	cgroupbpftest.AttachSockAddr(t, parent, cgroupbpf.Inet4Connect, "md_test_lb")
	cgroupbpftest.AttachSockAddr(t, child, cgroupbpf.UDP4Sendmsg, "md_test_send")
	cgroupbpftest.Unchanged(t, []string{child, parent}, func() {
		res, err := socketlb.Check{}.Check(t.Context(), nodecheck.Target{Name: "cart", SandboxID: "abc", Cgroup: child})
		if err != nil || len(res.Findings) != 1 {
			t.Fatalf("check: %+v, %v; want one finding", res, err)
		}
	})
}
