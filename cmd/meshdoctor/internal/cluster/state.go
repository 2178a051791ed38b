package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/meshdoctor/meshdoctor/cmd/meshdoctor/internal/cluster/rootcause"
	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// State is the cluster state the cluster-level root causes read, folded page by page.
type State struct {
	PodSecurity *rootcause.PodSecurity
	Coverage    *rootcause.Coverage
	// CNI says whether istio-cni runs in the cluster; unknown when pods could not be listed.
	CNI       rootcause.CNIInstall
	APIServer rootcause.APIServer
	// Notes say what could not be read, and so which analysis is missing or partial.
	Notes []string
}

// Findings are the cluster-level root causes of the state, with istiod's outages as the nodes
// reported them.
func (s *State) Findings(outage rootcause.IstiodOutage) []nodecheck.Finding {
	out := s.PodSecurity.Findings(s.CNI)
	if s.CNI != rootcause.CNIUnknown {
		out = append(out, s.Coverage.Findings()...)
	}
	if f, ok := rootcause.APIServerAvailability(s.APIServer, outage); ok {
		out = append(out, f)
	}
	return out
}

// ReadState reads namespaces, controllers' FailedCreate events, every scheduled pod, the
// kubernetes Service's endpoints and istiod's Deployments. What the caller may not read (RBAC) or
// what fails is a note, and the analysis that needs it is skipped or partial; only the context
// ending is an error.
func (g *Gatherer) ReadState(ctx context.Context) (*State, error) {
	s := &State{PodSecurity: rootcause.NewPodSecurity(), Coverage: rootcause.NewCoverage(), CNI: rootcause.CNIUnknown}
	c := g.Client
	note := func(what string, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("reading the cluster: %w", ctx.Err())
		}
		s.Notes = append(s.Notes, fmt.Sprintf("%s: %v", what, err))
		return nil
	}

	err := eachPage(ctx, metav1.ListOptions{},
		func(ctx context.Context, o metav1.ListOptions) (*corev1.NamespaceList, error) {
			return c.ListNamespaces(ctx, o)
		},
		func(l *corev1.NamespaceList) string { return l.Continue },
		func(l *corev1.NamespaceList) {
			for i := range l.Items {
				s.PodSecurity.AddNamespace(&l.Items[i])
				s.Coverage.AddNamespace(&l.Items[i])
			}
		})
	if err != nil {
		if err := note("namespaces not listed, so Pod Security levels and injection labels are unknown", err); err != nil {
			return nil, err
		}
	}

	err = eachPage(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("reason", "FailedCreate").String()},
		func(ctx context.Context, o metav1.ListOptions) (*corev1.EventList, error) {
			return c.ListEvents(ctx, metav1.NamespaceAll, o)
		},
		func(l *corev1.EventList) string { return l.Continue },
		func(l *corev1.EventList) {
			for i := range l.Items {
				s.PodSecurity.AddEvent(&l.Items[i])
			}
		})
	if err != nil {
		if err := note("FailedCreate events not listed, so pods refused by Pod Security are not cited", err); err != nil {
			return nil, err
		}
	}

	// Finished pods say nothing of coverage; the server filters them out.
	active := fields.AndSelectors(fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
		fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)))
	err = eachPage(ctx, metav1.ListOptions{FieldSelector: active.String()},
		func(ctx context.Context, o metav1.ListOptions) (*corev1.PodList, error) {
			return c.ListNamespacedPods(ctx, metav1.NamespaceAll, o)
		},
		func(l *corev1.PodList) string { return l.Continue },
		func(l *corev1.PodList) {
			for i := range l.Items {
				s.Coverage.AddPod(&l.Items[i])
			}
		})
	if err != nil {
		if err := note("pods not listed in every namespace, so istio-cni's coverage is not checked", err); err != nil {
			return nil, err
		}
	} else {
		s.CNI = s.Coverage.Installed()
	}

	if err := g.readAPIServer(ctx, &s.APIServer); err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("reading the cluster: %w", ctx.Err())
	}
	return s, nil
}

// readAPIServer reads the kubernetes Service's ready endpoints and istiod's Deployments; failures
// are recorded in the state.
func (g *Gatherer) readAPIServer(ctx context.Context, a *rootcause.APIServer) error {
	c := g.Client
	sl, err := c.ListEndpointSlices(ctx, rootcause.KubernetesNamespace,
		metav1.ListOptions{LabelSelector: rootcause.LabelServiceName + "=" + rootcause.KubernetesService})
	if err != nil {
		a.EndpointsError = err.Error()
	} else {
		for i := range sl.Items {
			a.AddEndpointSlice(&sl.Items[i])
		}
	}
	deps, derr := c.ListDeployments(ctx, metav1.NamespaceAll, metav1.ListOptions{LabelSelector: rootcause.IstiodSelector})
	if derr != nil {
		a.IstiodError = derr.Error()
	} else {
		for i := range deps.Items {
			a.AddDeployment(&deps.Items[i])
		}
	}
	return errors.Join(err, derr)
}

// CapabilityCheck is the Enrich of PodSecurityBlocksInit's first case: every pod a node reports
// with InitMissingNetAdmin is compared with its spec as the API server admitted it
// (rootcause.StrippedCapabilities), and the finding goes first among the pod's own.
type CapabilityCheck struct {
	mu       sync.Mutex
	failures int
	first    error
}

// Enrich implements Gatherer.Enrich with the gatherer's client.
func (c *CapabilityCheck) Enrich(g *Gatherer) func(ctx context.Context, rep *nodecheck.Report) {
	return func(ctx context.Context, rep *nodecheck.Report) {
		for i := range rep.Pods {
			p := &rep.Pods[i]
			if p.Name == "" || !slices.ContainsFunc(p.Findings, func(f nodecheck.Finding) bool { return f.Code == nodecheck.InitMissingNetAdmin }) {
				continue
			}
			pod, err := g.Client.GetPod(ctx, p.Namespace, p.Name)
			if err != nil {
				if !apierrors.IsNotFound(err) {
					c.failed(fmt.Errorf("getting pod %s/%s: %w", p.Namespace, p.Name, err))
				}
				continue
			}
			if f, ok := rootcause.StrippedCapabilities(*p, pod); ok {
				p.Findings = append([]nodecheck.Finding{f}, p.Findings...)
			}
		}
	}
}

func (c *CapabilityCheck) failed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	if c.first == nil {
		c.first = err
	}
}

// Note says what the check could not do, or "" when it did it all.
func (c *CapabilityCheck) Note() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failures == 0 {
		return ""
	}
	return fmt.Sprintf("%d pod(s) with InitMissingNetAdmin not compared with their spec (%v)", c.failures, c.first)
}
