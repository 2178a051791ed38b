// Package podwatch watches the API server's pods on this node only (a spec.nodeName field selector,
// never a cluster-wide watch) and turns what matters into check triggers: a pod whose init
// containers have all finished (istio-init has written, or failed to write, the rules) and a pod
// that has become ready. Its cache also tells the pod reporter what a pod already carries. The
// informer retries on its own while the API server is away and relists when it is back.
package podwatch

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Pods is what the watch needs of the API server (kubeapi.Client has it).
type Pods interface {
	ListPods(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)
	WatchPods(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Trigger asks the agent to check a pod.
type Trigger func(key, uid, why string)

// Watch is a pod informer restricted to one node.
type Watch struct {
	informer cache.SharedIndexInformer
}

// New builds the informer. trigger is called for pods worth a check; onChange (may be nil) for
// every pod added or updated (the reporter resyncs its annotations).
func New(api Pods, node string, resync time.Duration, trigger Trigger, onChange func(*corev1.Pod)) (*Watch, error) {
	onNode := fields.OneTermEqualSelector("spec.nodeName", node).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = onNode
			list, err := api.ListPods(ctx, o)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return list, nil
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = onNode
			return api.WatchPods(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	// Only what the agent reads is kept: managed fields are the bulk of a pod object.
	if err := inf.SetTransform(stripManagedFields); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return
			}
			if onChange != nil {
				onChange(p)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Pod)
			n, ok2 := newObj.(*corev1.Pod)
			if !ok1 || !ok2 {
				return
			}
			if onChange != nil {
				onChange(n)
			}
			if why := Why(o, n); why != "" {
				trigger(n.Namespace+"/"+n.Name, string(n.UID), why)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	return &Watch{informer: inf}, nil
}

func stripManagedFields(obj any) (any, error) {
	if p, ok := obj.(*corev1.Pod); ok {
		p.ManagedFields = nil
	}
	return obj, nil
}

// Run runs the informer until ctx ends, and returns once it has stopped.
func (w *Watch) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// Synced reports whether the informer has listed the node's pods at least once.
func (w *Watch) Synced() bool { return w.informer.HasSynced() }

// Pod returns the cached pod, or nil.
func (w *Watch) Pod(namespace, name string) *corev1.Pod {
	obj, ok, err := w.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil
	}
	p, _ := obj.(*corev1.Pod)
	return p
}

// Why says why a pod update deserves a check: its init containers have all finished, or it has
// become ready. Empty when it does not.
func Why(old, cur *corev1.Pod) string {
	switch {
	case !initDone(old) && initDone(cur):
		return "init containers finished"
	case !ready(old) && ready(cur):
		return "pod became ready"
	}
	return ""
}

func initDone(p *corev1.Pod) bool {
	if len(p.Spec.InitContainers) == 0 {
		return false
	}
	for _, s := range p.Status.InitContainerStatuses {
		// A native sidecar (restartPolicy Always) does not finish: started is its "done".
		if s.State.Terminated == nil && (s.Started == nil || !*s.Started) {
			return false
		}
	}
	return len(p.Status.InitContainerStatuses) == len(p.Spec.InitContainers)
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
