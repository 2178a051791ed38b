package podreport

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// otherPod tells the real API server's refusal of a patch naming a recreated pod's predecessor
// from other invalid patches, which must still be retried and reported.
func TestOtherPodOnARealAPIServer(t *testing.T) {
	kc := startAPI(t)
	ctx := t.Context()
	pod, err := kc.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "cart"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "meshdoctor.test/app:1"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch := func(body string) error {
		_, err := kc.CoreV1().Pods("default").Patch(ctx, "cart", types.MergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	for _, c := range []struct {
		name, body string
		want       bool
	}{
		{"the predecessor's UID", `{"metadata":{"uid":"00000000-0000-0000-0000-000000000000","annotations":{"meshdoctor.io/verdict":"ok"}}}`, true},
		{"an invalid annotation key", `{"metadata":{"uid":"` + string(pod.UID) + `","annotations":{"-bad key-":"x"}}}`, false},
	} {
		err := patch(c.body)
		if err == nil {
			t.Fatalf("%s: the patch was accepted", c.name)
		}
		if got := otherPod(err); got != c.want {
			t.Errorf("%s: otherPod(%v) = %v, want %v", c.name, err, got, c.want)
		}
	}
}

// startAPI starts a real kube-apiserver for the test and returns a client of it, with the default
// namespace's service account that pods need to be created.
func startAPI(t *testing.T) kubernetes.Interface {
	t.Helper()
	api := testbed.StartAPIServer(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	if _, err := kc.CoreV1().ServiceAccounts("default").Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return kc
}
