// Package kubeapi is meshdoctor's client of the Kubernetes API server, limited to the calls it
// makes: the agent lists and watches pods, merge-patches a pod, creates an Event, a TokenReview
// and a SubjectAccessReview; the cluster view lists nodes, namespaces, events, pods, Deployments
// and EndpointSlices, gets a pod and reads an agent's report through the pod proxy. It is
// client-go's rest package over a scheme that holds only the groups those calls use (core/v1,
// authentication.k8s.io/v1, authorization.k8s.io/v1, apps/v1, discovery.k8s.io/v1), because
// client-go's clientset (kubernetes.Interface) and its informer factory link every API group and
// register all of them at start-up: measured on an idle agent, that was 12.5 MiB of its 41 MiB
// RSS (binary pages their init functions and type tables touch, and what they allocate) for
// groups it never calls; the agent and the cluster view are one binary. Requests are made as the
// clientset makes them: protobuf where client-go prefers it, one HTTP client and one rate limiter
// shared by the groups. Errors are client-go's own, so apimachinery's errors helpers (IsNotFound,
// IsConflict) apply; callers say what they were doing.
package kubeapi

import (
	"context"
	"fmt"
	"io"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Client talks to one API server.
type Client struct {
	core, authn, authz, apps, discovery *rest.RESTClient
	params                              runtime.ParameterCodec
}

// New returns a client for cfg (which it does not modify).
func New(cfg *rest.Config) (*Client, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authnv1.AddToScheme, authzv1.AddToScheme,
		appsv1.AddToScheme, discoveryv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("API scheme: %w", err)
		}
	}
	// Status, WatchEvent and the options types, as the API server sends and takes them.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	codecs := serializer.NewCodecFactory(scheme)

	shared := rest.CopyConfig(cfg)
	if shared.UserAgent == "" {
		shared.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if shared.RateLimiter == nil && shared.QPS > 0 {
		if shared.Burst <= 0 {
			return nil, fmt.Errorf("API client: a QPS of %v needs a burst above 0", shared.QPS)
		}
		shared.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(shared.QPS, shared.Burst)
	}
	httpClient, err := rest.HTTPClientFor(shared)
	if err != nil {
		return nil, fmt.Errorf("API client transport: %w", err)
	}
	group := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		c := *shared
		c.GroupVersion = &gv
		c.APIPath = apiPath
		c.NegotiatedSerializer = codecs.WithoutConversion()
		rc, err := rest.RESTClientForConfigAndClient(&c, httpClient)
		if err != nil {
			return nil, fmt.Errorf("API client for %s: %w", gv, err)
		}
		return rc, nil
	}
	c := &Client{params: runtime.NewParameterCodec(scheme)}
	if c.core, err = group(corev1.SchemeGroupVersion, "/api"); err != nil {
		return nil, err
	}
	if c.authn, err = group(authnv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if c.authz, err = group(authzv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if c.apps, err = group(appsv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if c.discovery, err = group(discoveryv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	return c, nil
}

// timeout is the request timeout a list or watch asks for, as client-go's typed clients set it.
func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}

// ListPods lists the pods of every namespace that opts select.
func (c *Client) ListPods(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
	list := &corev1.PodList{}
	err := c.core.Get().UseProtobufAsDefault().Resource("pods").
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Do(ctx).Into(list)
	return list, err
}

// WatchPods watches the pods of every namespace that opts select.
func (c *Client) WatchPods(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.core.Get().UseProtobufAsDefault().Resource("pods").
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Watch(ctx)
}

// MergePatchPod applies a JSON merge patch to a pod and returns the pod as the server stored it.
func (c *Client) MergePatchPod(ctx context.Context, namespace, name string, patch []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	err := c.core.Patch(types.MergePatchType).UseProtobufAsDefault().Namespace(namespace).Resource("pods").Name(name).
		VersionedParams(&metav1.PatchOptions{}, c.params).Body(patch).Do(ctx).Into(pod)
	return pod, err
}

// CreateEvent creates ev in its namespace.
func (c *Client) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := c.core.Post().UseProtobufAsDefault().Namespace(ev.Namespace).Resource("events").
		VersionedParams(&metav1.CreateOptions{}, c.params).Body(ev).Do(ctx).Into(out)
	return out, err
}

// CreateTokenReview asks the API server who a token authenticates.
func (c *Client) CreateTokenReview(ctx context.Context, tr *authnv1.TokenReview) (*authnv1.TokenReview, error) {
	out := &authnv1.TokenReview{}
	err := c.authn.Post().UseProtobufAsDefault().Resource("tokenreviews").
		VersionedParams(&metav1.CreateOptions{}, c.params).Body(tr).Do(ctx).Into(out)
	return out, err
}

// CreateSubjectAccessReview asks the API server whether a user may do something.
func (c *Client) CreateSubjectAccessReview(ctx context.Context, sar *authzv1.SubjectAccessReview) (*authzv1.SubjectAccessReview, error) {
	out := &authzv1.SubjectAccessReview{}
	err := c.authz.Post().UseProtobufAsDefault().Resource("subjectaccessreviews").
		VersionedParams(&metav1.CreateOptions{}, c.params).Body(sar).Do(ctx).Into(out)
	return out, err
}

// The cluster view's calls. A namespace of "" (metav1.NamespaceAll) lists every namespace.

// list is a GET of a collection in a namespace (or all, or a cluster-scoped one), into out.
func (c *Client) list(ctx context.Context, rc *rest.RESTClient, namespace, resource string, opts metav1.ListOptions, out runtime.Object) error {
	return rc.Get().UseProtobufAsDefault().Namespace(namespace).Resource(resource).
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Do(ctx).Into(out)
}

// ListNamespacedPods lists the pods of one namespace ("" for all) that opts select.
func (c *Client) ListNamespacedPods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error) {
	out := &corev1.PodList{}
	return out, c.list(ctx, c.core, namespace, "pods", opts, out)
}

// GetPod reads one pod.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	out := &corev1.Pod{}
	err := c.core.Get().UseProtobufAsDefault().Namespace(namespace).Resource("pods").Name(name).
		VersionedParams(&metav1.GetOptions{}, c.params).Do(ctx).Into(out)
	return out, err
}

// ProxyGetPod GETs path from a pod's port through the API server's pod proxy (pods/proxy).
func (c *Client) ProxyGetPod(ctx context.Context, namespace, pod string, port int, path string) (io.ReadCloser, error) {
	return c.core.Get().Namespace(namespace).Resource("pods").SubResource("proxy").
		Name(fmt.Sprintf("http:%s:%d", pod, port)).Suffix(path).Stream(ctx)
}

// ListNodes lists the nodes opts select.
func (c *Client) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	out := &corev1.NodeList{}
	return out, c.list(ctx, c.core, "", "nodes", opts, out)
}

// ListNamespaces lists the namespaces opts select.
func (c *Client) ListNamespaces(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error) {
	out := &corev1.NamespaceList{}
	return out, c.list(ctx, c.core, "", "namespaces", opts, out)
}

// ListEvents lists the events of one namespace ("" for all) that opts select.
func (c *Client) ListEvents(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.EventList, error) {
	out := &corev1.EventList{}
	return out, c.list(ctx, c.core, namespace, "events", opts, out)
}

// ListDeployments lists the Deployments of one namespace ("" for all) that opts select.
func (c *Client) ListDeployments(ctx context.Context, namespace string, opts metav1.ListOptions) (*appsv1.DeploymentList, error) {
	out := &appsv1.DeploymentList{}
	return out, c.list(ctx, c.apps, namespace, "deployments", opts, out)
}

// ListEndpointSlices lists the EndpointSlices of one namespace ("" for all) that opts select.
func (c *Client) ListEndpointSlices(ctx context.Context, namespace string, opts metav1.ListOptions) (*discoveryv1.EndpointSliceList, error) {
	out := &discoveryv1.EndpointSliceList{}
	return out, c.list(ctx, c.discovery, namespace, "endpointslices", opts, out)
}
