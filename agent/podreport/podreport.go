// Package podreport writes the agent's verdicts where operators look in the API: the pod
// annotations meshdoctor.io/verdict, meshdoctor.io/findings and meshdoctor.io/since (a merge patch
// of those keys only, sent only when the pod does not already carry the values), Warning events on
// a pod when it turns broken (reason = finding code) and a Normal event when it recovers, and
// events on the Node for node-level findings. Writes go through a rate-limited queue with
// per-item exponential backoff, so an API server that is down only delays them: when it comes
// back the queue converges, and once converged nothing is written until something changes.
package podreport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// The annotations of the contract (DESIGN.md).
const (
	AnnotationVerdict  = "meshdoctor.io/verdict"
	AnnotationFindings = "meshdoctor.io/findings"
	AnnotationSince    = "meshdoctor.io/since"
)

// Component is the events' source and reporting controller.
const Component = "meshdoctor"

// PodGetter returns the API's view of a pod (the informer's cache); nil when unknown.
type PodGetter func(namespace, name string) *corev1.Pod

// API is what the reporter writes through (kubeapi.Client has it).
type API interface {
	MergePatchPod(ctx context.Context, namespace, name string, patch []byte) (*corev1.Pod, error)
	CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error)
}

// Config says where and how fast to write.
type Config struct {
	Client API
	Node   string
	// Pods is the informer's cache: a pod that already carries the values is not patched.
	Pods PodGetter
	// QPS and Burst bound the writes; RetryBase and RetryMax the per-item backoff.
	QPS       float64
	Burst     int
	RetryBase time.Duration
	RetryMax  time.Duration
	Log       *slog.Logger
}

// Reporter is an agent.Observer that writes annotations and events.
type Reporter struct {
	cfg   Config
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[string]

	mu   sync.Mutex
	pods map[string]*podWant // by "namespace/name"
	// node findings: current error/warning codes, and those already announced.
	nodeCodes     map[string]nodecheck.Finding
	nodeAnnounced map[string]bool
	writes        int
}

// podWant is what a pod should show, and which codes were already announced with an event.
type podWant struct {
	namespace, name, uid string
	verdict              nodecheck.Verdict
	codes                []string
	since                time.Time
	findings             []nodecheck.Finding
	announced            map[string]bool
	announcedSet         bool // announced was initialised from the pod's annotations
	// written is the verdict and codes this reporter last wrote to the pod (wantKey), empty
	// before its first write: while the informer's cache has not yet shown that write, the
	// cache cannot say whether the pod carries what is wanted now.
	written string
}

// wantKey is what a patch writes, for comparing with what was written.
func (w *podWant) wantKey() string { return string(w.verdict) + "|" + strings.Join(w.codes, ",") }

const nodeItem = "\x00node"

// New returns a reporter; Run starts its writer.
func New(cfg Config) *Reporter {
	if cfg.QPS <= 0 {
		cfg.QPS = 5
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 20
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	limiter := workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBase, cfg.RetryMax),
		&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(cfg.QPS), cfg.Burst)},
	)
	return &Reporter{
		cfg: cfg, log: cfg.Log,
		queue:         workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshdoctor-podreport"}),
		pods:          map[string]*podWant{},
		nodeCodes:     map[string]nodecheck.Finding{},
		nodeAnnounced: map[string]bool{},
	}
}

var _ agent.Observer = (*Reporter)(nil)

// PodChecked implements agent.Observer.
func (r *Reporter) PodChecked(_ *agent.PodState, cur agent.PodState) {
	t := cur.Target
	if t.Name == "" || cur.Outcome.Pod.Verdict == nodecheck.VerdictSkipped {
		return // a bare netns has no pod object; skipped pods get no annotations
	}
	key := t.Namespace + "/" + t.Name
	r.mu.Lock()
	w := r.pods[key]
	if w == nil || w.uid != t.UID {
		w = &podWant{namespace: t.Namespace, name: t.Name, uid: t.UID, announced: map[string]bool{}}
		r.pods[key] = w
	}
	changed := w.verdict != cur.Outcome.Pod.Verdict || !slices.Equal(w.codes, cur.Codes())
	w.verdict, w.codes, w.since, w.findings = cur.Outcome.Pod.Verdict, cur.Codes(), cur.Since, cur.Outcome.Pod.Findings
	r.mu.Unlock()
	if changed {
		r.queue.Add(key)
	}
}

// PodGone implements agent.Observer.
func (r *Reporter) PodGone(last agent.PodState) {
	r.mu.Lock()
	delete(r.pods, last.Key())
	r.mu.Unlock()
}

// NodeChecked implements agent.Observer.
func (r *Reporter) NodeChecked(_, cur agent.NodeState) {
	codes := map[string]nodecheck.Finding{}
	for _, f := range cur.Findings {
		if f.Severity == nodecheck.SeverityInfo {
			continue
		}
		if _, dup := codes[string(f.Code)]; !dup {
			codes[string(f.Code)] = f
		}
	}
	r.mu.Lock()
	changed := !sameKeys(codes, r.nodeCodes)
	r.nodeCodes = codes
	r.mu.Unlock()
	if changed {
		r.queue.Add(nodeItem)
	}
}

// Resync queues a pod whose API object changed (the informer saw it): if its annotations no
// longer match (the API server came back, someone removed them), they are written again.
func (r *Reporter) Resync(pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	r.mu.Lock()
	w := r.pods[key]
	stale := w != nil && w.uid == string(pod.UID) && !carries(pod, w)
	r.mu.Unlock()
	if stale {
		r.queue.Add(key)
	}
}

// Writes returns how many write requests the reporter has sent (tests, logs).
func (r *Reporter) Writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

// Run writes until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		r.queue.ShutDown()
	}()
	for {
		key, quit := r.queue.Get()
		if quit {
			return
		}
		var err error
		if key == nodeItem {
			err = r.syncNode(ctx)
		} else {
			err = r.syncPod(ctx, key)
		}
		switch {
		case err == nil:
			r.queue.Forget(key)
		case ctx.Err() != nil:
		default:
			r.log.Warn("cannot report to the API server; will retry", "item", itemName(key), "err", err,
				"retries", r.queue.NumRequeues(key))
			r.queue.AddRateLimited(key)
		}
		r.queue.Done(key)
	}
}

func itemName(key string) string {
	if key == nodeItem {
		return "node"
	}
	return key
}

// carries reports whether the pod already shows the wanted verdict and codes.
func carries(pod *corev1.Pod, w *podWant) bool {
	return pod.Annotations[AnnotationVerdict] == string(w.verdict) &&
		pod.Annotations[AnnotationFindings] == strings.Join(w.codes, ",")
}

func (r *Reporter) syncPod(ctx context.Context, key string) error {
	r.mu.Lock()
	w0 := r.pods[key]
	if w0 == nil {
		r.mu.Unlock()
		return nil
	}
	w := *w0
	w.announced = maps(w0.announced)
	r.mu.Unlock()

	var apiPod *corev1.Pod
	if r.cfg.Pods != nil {
		apiPod = r.cfg.Pods(w.namespace, w.name)
		if apiPod != nil && string(apiPod.UID) != w.uid {
			apiPod = nil
		}
	}
	if apiPod != nil && !w.announcedSet {
		// After a restart: what the pod already says was announced before.
		if apiPod.Annotations[AnnotationVerdict] == string(nodecheck.VerdictBroken) {
			for _, c := range strings.Split(apiPod.Annotations[AnnotationFindings], ",") {
				if c != "" {
					w.announced[c] = true
				}
			}
		}
		w.announcedSet = true
	}
	// The cache is trusted to say the pod already carries the wanted values only when this
	// reporter's last write was those values too: after a write of other values, a cache that
	// lags (its watch re-established after the API server was away) still shows older ones.
	trusted := w.written == "" || w.written == w.wantKey()
	if apiPod == nil || !trusted || !carries(apiPod, &w) {
		if err := r.patch(ctx, w); err != nil {
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) || otherPod(err) {
				r.log.Info("pod not in the API as discovered; not annotated", "pod", key, "err", err)
				return nil
			}
			return err
		}
		w.written = w.wantKey()
		r.mu.Lock()
		if cur := r.pods[key]; cur != nil && cur.uid == w.uid {
			cur.written = w.written
		}
		r.mu.Unlock()
	}
	if err := r.events(ctx, &w); err != nil {
		return err
	}
	r.mu.Lock()
	if cur := r.pods[key]; cur != nil && cur.uid == w.uid {
		cur.announced, cur.announcedSet = w.announced, true
	}
	r.mu.Unlock()
	return nil
}

func maps(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// patch merge-patches the three annotations, with the pod's UID as a precondition (a pod recreated
// under the same name is not annotated with its predecessor's verdict).
func (r *Reporter) patch(ctx context.Context, w podWant) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid": w.uid,
		"annotations": map[string]string{
			AnnotationVerdict:  string(w.verdict),
			AnnotationFindings: strings.Join(w.codes, ","),
			AnnotationSince:    w.since.UTC().Format(time.RFC3339),
		},
	}})
	if err != nil {
		return fmt.Errorf("encoding the patch of %s/%s: %w", w.namespace, w.name, err)
	}
	r.countWrite()
	if _, err := r.cfg.Client.MergePatchPod(ctx, w.namespace, w.name, body); err != nil {
		return fmt.Errorf("annotating pod %s/%s: %w", w.namespace, w.name, err)
	}
	r.log.Info("pod annotated", "pod", w.namespace+"/"+w.name, "verdict", w.verdict, "findings", w.codes)
	return nil
}

// otherPod tells the API server's refusal of a patch whose UID precondition names another pod:
// the name now belongs to a pod recreated under it. The server answers 422 (the UID is immutable),
// not 409, so retrying would only fail again until the old sandbox has left the node.
func otherPod(err error) bool {
	var status apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &status) || status.Status().Details == nil {
		return false
	}
	for _, c := range status.Status().Details.Causes {
		if c.Field == "metadata.uid" {
			return true
		}
	}
	return false
}

func (r *Reporter) countWrite() {
	r.mu.Lock()
	r.writes++
	r.mu.Unlock()
}

// events announces codes that are new since the pod turned broken (one Warning per code, reason =
// code), and a Normal event when a pod that was announced broken is ok again.
func (r *Reporter) events(ctx context.Context, w *podWant) error {
	ref := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: w.namespace, Name: w.name, UID: types.UID(w.uid)}
	switch w.verdict {
	case nodecheck.VerdictBroken:
		for _, f := range w.findings {
			if f.Severity != nodecheck.SeverityError || w.announced[string(f.Code)] {
				continue
			}
			if err := r.event(ctx, ref, corev1.EventTypeWarning, string(f.Code), findingMessage(f)); err != nil {
				return err
			}
			w.announced[string(f.Code)] = true
		}
	case nodecheck.VerdictOK:
		if len(w.announced) == 0 {
			return nil
		}
		was := make([]string, 0, len(w.announced))
		for c := range w.announced {
			was = append(was, c)
		}
		slices.Sort(was)
		if err := r.event(ctx, ref, corev1.EventTypeNormal, "CaptureRecovered",
			"traffic capture verified again; cleared: "+strings.Join(was, ", ")); err != nil {
			return err
		}
		clear(w.announced)
	}
	return nil
}

func (r *Reporter) syncNode(ctx context.Context) error {
	r.mu.Lock()
	cur := make(map[string]nodecheck.Finding, len(r.nodeCodes))
	for k, v := range r.nodeCodes {
		cur[k] = v
	}
	announced := maps(r.nodeAnnounced)
	r.mu.Unlock()
	// Kubelet's node events use the node's name as its UID.
	ref := corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: r.cfg.Node, UID: types.UID(r.cfg.Node)}
	for _, code := range sortedKeys(cur) {
		if announced[code] {
			continue
		}
		f := cur[code]
		typ := corev1.EventTypeWarning
		if err := r.event(ctx, ref, typ, code, findingMessage(f)); err != nil {
			return err
		}
		announced[code] = true
	}
	for _, code := range sortedKeys(announced) {
		if _, still := cur[code]; still {
			continue
		}
		if err := r.event(ctx, ref, corev1.EventTypeNormal, "NodeConditionCleared", code+" is no longer seen on the node"); err != nil {
			return err
		}
		delete(announced, code)
	}
	r.mu.Lock()
	r.nodeAnnounced = announced
	r.mu.Unlock()
	return nil
}

func (r *Reporter) event(ctx context.Context, ref corev1.ObjectReference, typ, reason, msg string) error {
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{GenerateName: ref.Name + ".", Namespace: ns},
		InvolvedObject:      ref,
		Reason:              reason,
		Message:             msg,
		Type:                typ,
		Source:              corev1.EventSource{Component: Component, Host: r.cfg.Node},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "meshdoctor.io/agent",
		ReportingInstance:   Component + "-" + r.cfg.Node,
	}
	r.countWrite()
	if _, err := r.cfg.Client.CreateEvent(ctx, ev); err != nil {
		return fmt.Errorf("creating %s event %s on %s %s: %w", typ, reason, ref.Kind, ref.Name, err)
	}
	r.log.Info("event sent", "kind", ref.Kind, "object", strings.TrimPrefix(ref.Namespace+"/"+ref.Name, "/"), "type", typ, "reason", reason)
	return nil
}

// maxEventMessage is the API server's limit on an event message.
const maxEventMessage = 1024

// findingMessage is a finding as an event message: what, the evidence, the remedy; bounded.
func findingMessage(f nodecheck.Finding) string {
	var b strings.Builder
	b.WriteString(f.Message)
	if len(f.Evidence) > 0 {
		if ev, err := json.Marshal(f.Evidence); err == nil {
			b.WriteString(" evidence: ")
			b.Write(ev)
		}
	}
	if f.Remedy != "" {
		b.WriteString(" remedy: ")
		b.WriteString(f.Remedy)
	}
	s := b.String()
	if len(s) > maxEventMessage {
		s = s[:maxEventMessage-3] + "..."
	}
	return s
}

func sameKeys[V any](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
