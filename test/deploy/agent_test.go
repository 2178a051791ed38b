package deploy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/test/testbed"
	"github.com/meshdoctor/meshdoctor/test/testbed/kubelet"
)

// TestAgentNeedsExactlyTheChartRBAC runs the real agent on a node of real CRI pods with the token
// kubelet would give its pod (the chart's ServiceAccount, bound to a pod of the node), the chart's
// RBAC and admission policy in force, and its debug endpoint off loopback (so it checks tokens).
// It annotates and reports events, its debug endpoint lets in only who the chart's viewer role
// names; the API server's audit log shows no request refused, every pod list and watch restricted
// to the node, and exactly the chart's rules used: none missing, none to spare.
func TestAgentNeedsExactlyTheChartRBAC(t *testing.T) {
	c := startCluster(t)
	debugPort := strconv.Itoa(freePort(t))
	chart := helmTemplate(t, "agent.debugAddress=0.0.0.0:"+debugPort)
	c.install(t, chart)
	node := kubelet.Start(t)
	ctx := t.Context()
	c.node(t, "test-node")
	c.namespace(t, "shop", nil)

	// cart is healthy; pay's istio-init lacks NET_ADMIN, so its rules are never written.
	for name, initCaps := range map[string][]string{"cart": nil, "pay": {"NET_RAW"}} {
		run := kubelet.InjectedPod("shop", name, initCaps...)
		obj := c.pod(t, "shop", name, "test-node", "", run.Annotations)
		run.UID = string(obj.UID)
		if _, err := node.RunPod(ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	agentPod := c.pod(t, "meshdoctor", "meshdoctor-x7k2p", "test-node", "meshdoctor", nil)
	kubeconfig := c.kubeconfigFor(t, c.token(t, "meshdoctor", "meshdoctor", agentPod))
	dir := t.TempDir()
	metrics := "127.0.0.1:" + strconv.Itoa(freePort(t))
	a := testbed.StartProcess(t, binary, "agent", "--kubeconfig", kubeconfig, "--node-name", "test-node",
		"--containerd-address", node.Containerd.Address, "--node-backend", "none",
		"--metrics-address", metrics, "--debug-address", "0.0.0.0:"+debugPort,
		"--cni-conf-dir", dir, "--cni-bin-dir", dir, "--pod-log-dir", dir, "--state-dir", t.TempDir(),
		"--recheck-interval", "5s", "--debounce", "200ms")

	verdicts := map[string]string{"cart": "ok", "pay": "broken"}
	testbed.Eventually(t, 90*time.Second, "pods annotated", func() error {
		for name, want := range verdicts {
			p, err := c.admin.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := p.Annotations["meshdoctor.io/verdict"]; got != want {
				return fmt.Errorf("%s annotated %q, want %q", name, got, want)
			}
		}
		return nil
	})
	testbed.Eventually(t, 30*time.Second, "Warning event on pay", func() error {
		evs, err := c.admin.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=pay,type=Warning"})
		if err != nil || len(evs.Items) == 0 {
			return fmt.Errorf("no Warning event on pay (%v)", err)
		}
		return nil
	})

	// The debug endpoint off loopback: who the chart's viewer role names gets in, no one else.
	c.namespace(t, "ops", nil)
	for _, sa := range []string{"viewer", "stranger"} {
		_, err := c.admin.CoreV1().ServiceAccounts("ops").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		c.mustCreate(t, err)
	}
	_, err := c.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ops-viewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "meshdoctor-debug-viewer"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "ops", Name: "viewer"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	report := "http://127.0.0.1:" + debugPort + "/debug/report"
	for _, tc := range []struct {
		who   string
		token string
		want  int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"a stranger", c.token(t, "ops", "stranger", nil), http.StatusForbidden},
		{"a viewer", c.token(t, "ops", "viewer", nil), http.StatusOK},
		{"a forged token", "not-a-token", http.StatusUnauthorized},
	} {
		code, body := getWithToken(t, report, tc.token)
		if code != tc.want {
			t.Errorf("%s: /debug/report answered %d, want %d: %s", tc.who, code, tc.want, body)
		}
		if code == http.StatusOK {
			var rep nodecheck.Report
			if err := json.Unmarshal(body, &rep); err != nil || len(rep.Pods) != 2 {
				t.Errorf("%s: /debug/report is not the node's report (%v): %s", tc.who, err, body)
			}
		}
	}
	a.Stop(t)

	// What the agent called, from the audit log, against what the chart grants.
	reqs, err := c.api.Requests("meshdoctor-agent/")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, r := range reqs {
		if r.User.Username != "system:serviceaccount:meshdoctor:meshdoctor" {
			t.Errorf("request as %s, not the chart's ServiceAccount: %s %s", r.User.Username, r.Verb, r.RequestURI)
		}
		if r.ResponseStatus.Code == http.StatusForbidden || r.ResponseStatus.Code == http.StatusUnauthorized {
			t.Errorf("refused (%d): %s %s", r.ResponseStatus.Code, r.Verb, r.RequestURI)
		}
		if r.ObjectRef.Resource == "pods" && (r.Verb == "list" || r.Verb == "watch") &&
			!strings.Contains(r.RequestURI, "fieldSelector=spec.nodeName%3Dtest-node") {
			t.Errorf("a %s of pods beyond the node: %s", r.Verb, r.RequestURI)
		}
		used[rule(r.ObjectRef.APIGroup, r.ObjectRef.Resource, r.ObjectRef.Subresource, r.Verb)] = true
	}
	var role rbacv1.ClusterRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objects(t, chart), "ClusterRole", "meshdoctor-agent").Object, &role); err != nil {
		t.Fatal(err)
	}
	granted := map[string]bool{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					res, sub, _ := strings.Cut(res, "/")
					granted[rule(g, res, sub, v)] = true
				}
			}
		}
	}
	for r := range used {
		if !granted[r] {
			t.Errorf("the agent called %s, which the chart does not grant", r)
		}
	}
	for r := range granted {
		if !used[r] {
			t.Errorf("the chart grants %s, which the agent never called", r)
		}
	}
	t.Logf("%d requests; rules used: %s", len(reqs), strings.Join(sortedKeys(used), ", "))
}

func rule(group, resource, subresource, verb string) string {
	r := resource
	if subresource != "" {
		r += "/" + subresource
	}
	if group != "" {
		r = group + "/" + r
	}
	return verb + " " + r
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func getWithToken(t *testing.T, url, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}
