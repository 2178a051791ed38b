package deploy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// cluster is a test API server with the tools to install manifests into it.
type cluster struct {
	api     *testbed.APIServer
	kubectl string
	admin   kubernetes.Interface
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	api := testbed.StartAPIServer(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{api: api, kubectl: testbed.Kubectl(t), admin: kubernetes.NewForConfigOrDie(cfg)}
}

// kubectlRun runs kubectl as the admin with manifests on stdin.
func (c *cluster) kubectlRun(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := run(t, stdin, c.kubectl, append([]string{"--kubeconfig", c.api.Kubeconfig}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// install applies rendered manifests for real, the Namespace first (namespaced objects need it).
func (c *cluster) install(t *testing.T, manifests []byte) {
	t.Helper()
	c.kubectlRun(t, manifests, "apply", "--server-side", "-f", "-")
}

func (c *cluster) mustCreate(t *testing.T, err error) {
	t.Helper()
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// node creates a Node object.
func (c *cluster) node(t *testing.T, name string) {
	t.Helper()
	_, err := c.admin.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	c.mustCreate(t, err)
}

// namespace creates a namespace with its default ServiceAccount (no controller-manager here).
func (c *cluster) namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := t.Context()
	_, err := c.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	c.mustCreate(t, err)
	_, err = c.admin.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	c.mustCreate(t, err)
}

// pod creates a pod bound to a node, running as a ServiceAccount ("" for default).
func (c *cluster) pod(t *testing.T, namespace, name, node, serviceAccount string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	p, err := c.admin.CoreV1().Pods(namespace).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations,
			Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: serviceAccount,
			Containers: []corev1.Container{{Name: "app", Image: "meshdoctor.test/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// token returns a token of a ServiceAccount, bound to a pod as kubelet's projected tokens are
// (nil: not bound to anything).
func (c *cluster) token(t *testing.T, namespace, serviceAccount string, boundTo *corev1.Pod) string {
	t.Helper()
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}
	if boundTo != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: boundTo.Name, UID: boundTo.UID}
	}
	tr, err := c.admin.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, serviceAccount, err)
	}
	return tr.Status.Token
}

// clientFor is a client with a bearer token.
func (c *cluster) clientFor(token string) kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(c.restConfig(token))
}

func (c *cluster) restConfig(token string) *rest.Config {
	return &rest.Config{Host: c.api.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
}

// kubeconfigFor writes a kubeconfig with a bearer token.
func (c *cluster) kubeconfigFor(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: %q}}]
contexts: [{name: t, context: {cluster: t, user: u}}]
current-context: t
`, c.api.URL, token)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func ptr[T any](v T) *T { return &v }

// installCRDs applies prometheus-operator's CRDs for real and waits until they serve.
func (c *cluster) installCRDs(t *testing.T) {
	t.Helper()
	dir := testbed.PrometheusOperatorCRDs(t)
	c.kubectlRun(t, nil, "apply", "--server-side", "-f", dir)
	// kubectl wait fails outright on a CRD whose status is not written yet: retry until it holds.
	args := []string{"--kubeconfig", c.api.Kubeconfig, "wait", "--for", "condition=Established", "--timeout", "10s",
		"crd/servicemonitors.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com",
		"crd/prometheusrules.monitoring.coreos.com"}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := run(t, nil, c.kubectl, args...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
}

// TestManifestsPassServerSideDryRun: the kustomize base with every component, the chart with its
// defaults and the chart with every option are accepted by a real API server's validation and
// admission (kubectl apply --dry-run=server), CRD objects against prometheus-operator's CRDs. The
// DaemonSet's pod is admitted by Pod Security in the chart's namespace, and refused where the
// namespace enforces baseline: the namespace's label is what makes it run.
func TestManifestsPassServerSideDryRun(t *testing.T) {
	c := startCluster(t)
	c.installCRDs(t)
	defaults := helmTemplate(t)
	ns := find(t, objects(t, defaults), "Namespace", "meshdoctor")
	nsYAML, err := ns.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	c.install(t, nsYAML)

	kustomized, err := run(t, nil, c.kubectl, "kustomize", overlay(t))
	if err != nil {
		t.Fatal(err)
	}
	variants := []struct {
		name      string
		manifests []byte
	}{
		{"kustomize base and every component", kustomized},
		{"chart, default values", defaults},
		{"chart, every option", helmTemplate(t, append(everyOption,
			"agent.debugAddress=0.0.0.0:9810", "runtime.criSocket=/var/run/crio/crio.sock",
			"agent.perPodMetrics=true", "agent.logRules=rules: []", "admissionPolicy.enabled=true", "netfilter.kernelFiles=true",
			"extraCapabilities={SYS_PTRACE}", "clusterView.subjects[0].kind=Group", "clusterView.subjects[0].name=sre",
			"clusterView.subjects[0].apiGroup=rbac.authorization.k8s.io")...)},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			want := len(objects(t, v.manifests))
			out := c.kubectlRun(t, v.manifests, "apply", "--dry-run=server", "-f", "-")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			accepted := 0
			for _, l := range lines {
				if strings.HasSuffix(l, "(server dry run)") {
					accepted++
				}
			}
			if accepted != want {
				t.Errorf("%d of %d objects accepted:\n%s", accepted, want, out)
			}
		})
	}

	// The DaemonSet's pod as the DaemonSet controller would create it, on a node.
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objects(t, defaults), "DaemonSet", "meshdoctor").Object, &ds); err != nil {
		t.Fatal(err)
	}
	c.node(t, "node-a")
	agentPod := func(namespace string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: ds.Spec.Template.ObjectMeta, Spec: ds.Spec.Template.Spec}
		p.Name, p.Namespace, p.Spec.NodeName, p.Spec.ServiceAccountName = "meshdoctor-x1", namespace, "node-a", ""
		return p
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	c.namespace(t, "meshdoctor", nil)
	if _, err := c.admin.CoreV1().Pods("meshdoctor").Create(t.Context(), agentPod("meshdoctor"), dryRun); err != nil {
		t.Errorf("the DaemonSet's pod is refused in the chart's namespace: %v", err)
	}
	c.namespace(t, "baseline", map[string]string{"pod-security.kubernetes.io/enforce": "baseline"})
	_, err = c.admin.CoreV1().Pods("baseline").Create(t.Context(), agentPod("baseline"), dryRun)
	if err == nil || !apierrors.IsForbidden(err) {
		t.Errorf("the DaemonSet's pod in a baseline namespace: %v, want refused by Pod Security", err)
	} else {
		t.Logf("baseline namespace refuses it, as it must: %v", err)
	}
}

// TestAdmissionPolicyFencesTheAgent: with the chart installed, the agent's ServiceAccount token
// bound to an agent pod of node-a may change the meshdoctor.io/* annotations of node-a's pods and
// nothing else: not other annotations, labels or spec, not node-b's pods, not with a token that
// names no node; RBAC refuses what the policy need not see (other resources, deletes). The policy
// leaves every other user alone.
func TestAdmissionPolicyFencesTheAgent(t *testing.T) {
	c := startCluster(t)
	c.install(t, helmTemplate(t))
	ctx := t.Context()
	c.node(t, "node-a")
	c.node(t, "node-b")
	c.namespace(t, "shop", nil)
	keep := map[string]string{"owner.example/keep": "me"}
	cart := c.pod(t, "shop", "cart", "node-a", "", keep)
	pay := c.pod(t, "shop", "pay", "node-b", "", keep)
	agentPod := c.pod(t, "meshdoctor", "meshdoctor-a1b2c", "node-a", "meshdoctor", nil)
	agent := c.clientFor(c.token(t, "meshdoctor", "meshdoctor", agentPod))
	unbound := c.clientFor(c.token(t, "meshdoctor", "meshdoctor", nil))

	patch := func(cl kubernetes.Interface, p *corev1.Pod, body string) error {
		_, err := cl.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	const ours = `{"metadata":{"annotations":{"meshdoctor.io/verdict":"broken","meshdoctor.io/findings":"RedirectRulesMissing"}}}`
	// The policy takes effect a moment after it is created: wait until it refuses.
	deadline := time.Now().Add(30 * time.Second)
	for patch(agent, pay, ours) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the admission policy never refused a patch of another node's pod")
		}
		time.Sleep(200 * time.Millisecond)
	}

	cases := []struct {
		name    string
		client  kubernetes.Interface
		pod     *corev1.Pod
		body    string
		allowed bool
		// why must appear in the refusal.
		why string
	}{
		{"its annotations on its node's pod", agent, cart, ours, true, ""},
		{"removing its annotation", agent, cart, `{"metadata":{"annotations":{"meshdoctor.io/findings":null}}}`, true, ""},
		{"another annotation", agent, cart, `{"metadata":{"annotations":{"owner.example/keep":"you"}}}`, false, "only the meshdoctor.io/* annotations"},
		{"adding a foreign annotation beside its own", agent, cart, `{"metadata":{"annotations":{"meshdoctor.io/verdict":"ok","sidecar.istio.io/inject":"false"}}}`, false, "only the meshdoctor.io/* annotations"},
		{"removing another annotation", agent, cart, `{"metadata":{"annotations":{"owner.example/keep":null}}}`, false, "only the meshdoctor.io/* annotations"},
		{"a label", agent, cart, `{"metadata":{"labels":{"app":"evil"}}}`, false, "spec, labels"},
		{"the spec", agent, cart, `{"spec":{"activeDeadlineSeconds":5}}`, false, "spec, labels"},
		{"its annotations on another node's pod", agent, pay, ours, false, "may not annotate a pod of node node-b"},
		{"a token bound to no pod", unbound, cart, ours, false, "names no node"},
		{"another user, another annotation", c.admin, cart, `{"metadata":{"annotations":{"owner.example/other":"ok"}}}`, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := patch(tc.client, tc.pod, tc.body)
			switch {
			case tc.allowed && err != nil:
				t.Errorf("refused: %v", err)
			case !tc.allowed && err == nil:
				t.Errorf("allowed; want refused (%s)", tc.why)
			case !tc.allowed && !strings.Contains(err.Error(), tc.why):
				t.Errorf("refused with %q; want it to say %q", err, tc.why)
			}
		})
	}

	// RBAC refuses what the agent never does.
	forbidden := []struct {
		name string
		do   func() error
	}{
		{"delete a pod", func() error { return agent.CoreV1().Pods("shop").Delete(ctx, "cart", metav1.DeleteOptions{}) }},
		{"patch pod status", func() error {
			_, err := agent.CoreV1().Pods("shop").Patch(ctx, "cart", types.MergePatchType, []byte(`{"status":{"message":"x"}}`), metav1.PatchOptions{}, "status")
			return err
		}},
		{"read a secret", func() error {
			_, err := agent.CoreV1().Secrets("shop").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"patch a node", func() error {
			_, err := agent.CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.do(); !apierrors.IsForbidden(err) {
			t.Errorf("the agent may %s: %v", f.name, err)
		}
	}
	// What the agent does besides patching: events on its pods.
	_, err := agent.CoreV1().Events("shop").Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "cart."},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "cart", UID: cart.UID},
		Reason:         "RedirectRulesMissing", Type: corev1.EventTypeWarning, Message: "test",
	}, metav1.CreateOptions{})
	if err != nil {
		t.Errorf("the agent may not create an event: %v", err)
	}
	final, err := c.admin.CoreV1().Pods("shop").Get(ctx, "cart", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if final.Annotations["owner.example/keep"] != "me" || final.Labels["app"] != "cart" || final.Spec.ActiveDeadlineSeconds != nil {
		t.Errorf("the agent changed what it may not: annotations %v, labels %v", final.Annotations, final.Labels)
	}
}
