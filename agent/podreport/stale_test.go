package podreport

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/diagnose"
	"github.com/meshdoctor/meshdoctor/test/testbed"
)

// clientsetAPI writes through client-go, as kubeapi.Client does for the agent.
type clientsetAPI struct{ kc kubernetes.Interface }

func (c clientsetAPI) MergePatchPod(ctx context.Context, ns, name string, patch []byte) (*corev1.Pod, error) {
	return c.kc.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
}

func (c clientsetAPI) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	return c.kc.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
}

// A pod turns broken, then ok again, while the informer's cache still shows it as it was before
// the broken write (its watch lagging, as after the API server was away; the getter returning that
// older copy stands in for the lagging cache). The ok must still be written: the cache showing
// "ok" says nothing once the reporter itself has written "broken" since. Caught on the test bed
// by TestAgentReportsToAPIServer, where the annotation stayed broken.
func TestWritesThroughALaggingCache(t *testing.T) {
	kc := startAPI(t)
	ctx := t.Context()
	pod, err := kc.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "cart",
		Annotations: map[string]string{AnnotationVerdict: "ok", AnnotationFindings: ""}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "meshdoctor.test/app:1"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := pod.DeepCopy() // what the cache keeps showing: verdict ok, before any write
	r := New(Config{Client: clientsetAPI{kc}, Node: "test-node", RetryBase: 10 * time.Millisecond,
		Pods: func(ns, name string) *corev1.Pod { return stale }})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go r.Run(runCtx)

	target := nodecheck.Target{Namespace: "default", Name: "cart", UID: string(pod.UID)}
	state := func(v nodecheck.Verdict, codes ...nodecheck.Code) agent.PodState {
		var fs []nodecheck.Finding
		for _, c := range codes {
			fs = append(fs, nodecheck.Finding{Code: c, Severity: nodecheck.SeverityError, Message: "m", Remedy: "r"})
		}
		return agent.PodState{Target: target, Since: time.Now(),
			Outcome: diagnose.Outcome{Pod: nodecheck.PodReport{Verdict: v, Findings: fs}}}
	}
	waitVerdict := func(want string) {
		t.Helper()
		testbed.Eventually(t, 10*time.Second, "cart annotated "+want, func() error {
			p, err := kc.CoreV1().Pods("default").Get(ctx, "cart", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := p.Annotations[AnnotationVerdict]; got != want {
				return &verdictError{got}
			}
			return nil
		})
	}
	r.PodChecked(nil, state(nodecheck.VerdictBroken, nodecheck.RedirectRulesIncomplete))
	waitVerdict("broken")
	r.PodChecked(nil, state(nodecheck.VerdictOK))
	waitVerdict("ok")
	// The recovery event is written after the annotation: count from once it is there.
	testbed.Eventually(t, 10*time.Second, "CaptureRecovered event written", func() error {
		evs, err := kc.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "reason=CaptureRecovered"})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return errors.New("no CaptureRecovered event yet")
		}
		return nil
	})
	// Once the last write is what is wanted, the cache is trusted again: a sync of the pod
	// (as a resync would queue) writes nothing.
	writes := r.Writes()
	r.queue.Add("default/cart")
	time.Sleep(300 * time.Millisecond)
	if r.Writes() != writes {
		t.Errorf("%d writes for a pod whose state did not change", r.Writes()-writes)
	}
}

type verdictError struct{ got string }

func (e *verdictError) Error() string { return "verdict annotation is " + e.got }
