package kubeapi_test

import (
	"context"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/kubeapi"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// Every call the agent makes, against a real kube-apiserver: what it lists, watches, patches and
// creates is what the server stores, and the server's refusals keep their meaning
// (apierrors.IsNotFound, IsInvalid) for the reporter's retry decisions.
func TestClientAgainstAPIServer(t *testing.T) {
	api := testbed.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(cfg) // the test's own hands, not the agent's client
	c, err := kubeapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}))
	must(admin.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	pod := func(name, node string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Annotations: map[string]string{"owner.example/keep": "me"}},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "meshdoctor.test/app:1"}}},
		}
	}
	cart, err := admin.CoreV1().Pods("shop").Create(ctx, pod("cart", "node-a"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	must(admin.CoreV1().Pods("shop").Create(ctx, pod("pay", "node-b"), metav1.CreateOptions{}))

	onA := metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}
	list, err := c.ListPods(ctx, onA)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "cart" || list.Items[0].UID != cart.UID {
		t.Fatalf("pods on node-a: %+v, want cart only", list.Items)
	}

	onA.ResourceVersion = list.ResourceVersion
	w, err := c.WatchPods(ctx, onA)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	patch := []byte(`{"metadata":{"uid":"` + string(cart.UID) + `","annotations":{"meshdoctor.io/verdict":"broken"}}}`)
	patched, err := c.MergePatchPod(ctx, "shop", "cart", patch)
	if err != nil {
		t.Fatal(err)
	}
	if patched.Annotations["meshdoctor.io/verdict"] != "broken" || patched.Annotations["owner.example/keep"] != "me" {
		t.Errorf("annotations after the merge patch: %v", patched.Annotations)
	}
	select {
	case ev := <-w.ResultChan():
		p, ok := ev.Object.(*corev1.Pod)
		if ev.Type != watch.Modified || !ok || p.Annotations["meshdoctor.io/verdict"] != "broken" {
			t.Errorf("watch event %s %T, want the patched pod Modified", ev.Type, ev.Object)
		}
	case <-ctx.Done():
		t.Fatal("no watch event for the patch")
	}

	stale := []byte(`{"metadata":{"uid":"00000000-0000-0000-0000-000000000000","annotations":{"meshdoctor.io/verdict":"ok"}}}`)
	// The API server refuses a patch whose UID precondition names another pod as invalid (the
	// UID is immutable), and leaves the pod as it was.
	if _, err := c.MergePatchPod(ctx, "shop", "cart", stale); !apierrors.IsInvalid(err) {
		t.Errorf("patch with another pod's UID: %v, want invalid", err)
	}
	if p, err := admin.CoreV1().Pods("shop").Get(ctx, "cart", metav1.GetOptions{}); err != nil || p.Annotations["meshdoctor.io/verdict"] != "broken" {
		t.Errorf("cart after a refused patch: %v, %v", p.Annotations, err)
	}
	if _, err := c.MergePatchPod(ctx, "shop", "gone", patch); !apierrors.IsNotFound(err) {
		t.Errorf("patch of a missing pod: %v, want not found", err)
	}

	ev, err := c.CreateEvent(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "cart.", Namespace: "shop"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: "shop", Name: "cart", UID: cart.UID},
		Reason:         "RedirectRulesMissing", Message: "m", Type: corev1.EventTypeWarning,
		Source: corev1.EventSource{Component: "meshdoctor", Host: "node-a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := admin.CoreV1().Events("shop").Get(ctx, ev.Name, metav1.GetOptions{})
	if err != nil || stored.Reason != "RedirectRulesMissing" || stored.InvolvedObject.UID != cart.UID {
		t.Errorf("event as stored: %+v, %v", stored, err)
	}

	for _, tc := range []struct {
		token string
		user  string
	}{{api.Token, "admin"}, {"not-a-token", ""}} {
		tr, err := c.CreateTokenReview(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tc.token}})
		if err != nil {
			t.Fatal(err)
		}
		if tr.Status.Authenticated != (tc.user != "") || tr.Status.User.Username != tc.user {
			t.Errorf("token review of %q: %+v, want user %q", tc.token, tr.Status, tc.user)
		}
	}
	for _, tc := range []struct {
		user    string
		groups  []string
		allowed bool
	}{{"admin", []string{"system:masters"}, true}, {"stranger", nil, false}} {
		sar, err := c.CreateSubjectAccessReview(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: tc.user, Groups: tc.groups,
			NonResourceAttributes: &authzv1.NonResourceAttributes{Path: "/debug/report", Verb: "get"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != tc.allowed {
			t.Errorf("%s may get /debug/report: %v, want %v", tc.user, sar.Status.Allowed, tc.allowed)
		}
	}
}
