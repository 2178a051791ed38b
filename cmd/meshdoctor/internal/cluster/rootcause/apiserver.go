package rootcause

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// The Service every pod reaches the API server through, and the label of its EndpointSlices.
const (
	KubernetesService      = "kubernetes"
	KubernetesNamespace    = "default"
	LabelServiceName       = "kubernetes.io/service-name"
	istiodAppLabel         = "app"
	istiodAppValue         = "istiod"
	maxEndpointsInEvidence = 20
)

// IstiodSelector selects istiod's Deployments (Istio's chart labels them app=istiod).
const IstiodSelector = istiodAppLabel + "=" + istiodAppValue

// APIServer is the API server's availability as the cluster shows it: the ready endpoints of the
// kubernetes Service (each one an API server: one means no high availability) and istiod's
// replicas. Errors say what could not be read. The endpoints come from the Service's
// EndpointSlices, which the API server has kept beside the (deprecated) Endpoints object since
// Kubernetes 1.21.
type APIServer struct {
	Endpoints      []string  `json:"endpoints"`
	EndpointsError string    `json:"endpointsError,omitempty"`
	Istiod         []Istiod  `json:"istiod"`
	IstiodError    string    `json:"istiodError,omitempty"`
	ReadAt         time.Time `json:"readAt,omitzero"`
}

// Istiod is one istiod Deployment.
type Istiod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Replicas  int32  `json:"replicas"`
	Ready     int32  `json:"ready"`
}

// AddEndpointSlice records the ready endpoints of one of the kubernetes Service's slices.
func (a *APIServer) AddEndpointSlice(s *discoveryv1.EndpointSlice) {
	var ports []string
	for _, p := range s.Ports {
		if p.Port != nil {
			ports = append(ports, strconv.Itoa(int(*p.Port)))
		}
	}
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		for _, addr := range e.Addresses {
			a.addEndpoint(addr, ports)
		}
	}
}

func (a *APIServer) addEndpoint(addr string, ports []string) {
	ep := addr
	if len(ports) > 0 {
		ep = net.JoinHostPort(addr, ports[0])
	}
	if !slices.Contains(a.Endpoints, ep) && len(a.Endpoints) < maxEndpointsInEvidence {
		a.Endpoints = append(a.Endpoints, ep)
		slices.Sort(a.Endpoints)
	}
}

// AddDeployment records an istiod Deployment.
func (a *APIServer) AddDeployment(d *appsv1.Deployment) {
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	a.Istiod = append(a.Istiod, Istiod{Namespace: d.Namespace, Name: d.Name, Replicas: replicas, Ready: d.Status.ReadyReplicas})
	slices.SortFunc(a.Istiod, func(x, y Istiod) int {
		return strings.Compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name)
	})
}

// IstiodOutage folds the nodes' IstiodAPIServerUnreachable findings: how many nodes saw istiod
// lose the API server, how many log lines, when, and whether it is still going on.
type IstiodOutage struct {
	Nodes  int       `json:"nodes"`
	Active int       `json:"active"`
	Lines  int64     `json:"lines"`
	First  time.Time `json:"firstSeen,omitzero"`
	Last   time.Time `json:"lastSeen,omitzero"`
	sample sample
}

// Add records one node's finding; other codes are ignored.
func (o *IstiodOutage) Add(node string, f nodecheck.Finding) {
	if f.Code != nodecheck.IstiodAPIServerUnreachable {
		return
	}
	o.Nodes++
	o.sample.add(node, maxSample)
	if s, _ := f.Evidence["state"].(string); s == "active" {
		o.Active++
	}
	switch n := f.Evidence["count"].(type) {
	case float64:
		o.Lines += int64(n)
	case int64:
		o.Lines += n
	case int:
		o.Lines += int64(n)
	}
	if t := evidenceTime(f.Evidence["firstSeen"]); !t.IsZero() && (o.First.IsZero() || t.Before(o.First)) {
		o.First = t
	}
	if t := evidenceTime(f.Evidence["lastSeen"]); t.After(o.Last) {
		o.Last = t
	}
}

// SampleNodes are the first few nodes (in name order) that saw it.
func (o *IstiodOutage) SampleNodes() []string { return o.sample.Names }

func evidenceTime(v any) time.Time {
	switch v := v.(type) {
	case time.Time:
		return v.UTC()
	case string:
		t, err := time.Parse(time.RFC3339Nano, v)
		if err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// APIServerAvailability puts istiod's outages, seen in the nodes' logs, beside the API server's
// availability: with one API server endpoint every restart (an upgrade, control-plane autoscaling)
// cuts istiod off, which is the guide's explanation of the transient errors; with several, a
// restart does not explain them. Nothing when no node saw an outage.
func APIServerAvailability(a APIServer, o IstiodOutage) (nodecheck.Finding, bool) {
	if o.Nodes == 0 {
		return nodecheck.Finding{}, false
	}
	var msg strings.Builder
	fmt.Fprintf(&msg, "istiod lost the API server as seen on %d node(s) (%s", o.Nodes, o.sample)
	if o.Lines > 0 {
		fmt.Fprintf(&msg, "; %d log line(s)", o.Lines)
	}
	if !o.Last.IsZero() {
		fmt.Fprintf(&msg, ", the last at %s", o.Last.Format(time.RFC3339))
	}
	fmt.Fprintf(&msg, "; still active on %d)", o.Active)
	remedy := "The errors are transient while the API server is away; istiod recovers by itself. "
	n := len(a.Endpoints)
	switch {
	case a.EndpointsError != "":
		fmt.Fprintf(&msg, "; the kubernetes Service's endpoints could not be read (%s)", a.EndpointsError)
	case n == 0:
		msg.WriteString("; the kubernetes Service in default has no ready endpoint: no API server is reachable through it now")
		remedy += "Check the API server's health and the kubernetes Service's endpoints (kubectl -n default get endpointslices -l kubernetes.io/service-name=kubernetes). "
	case n == 1:
		fmt.Fprintf(&msg, "; the kubernetes Service in default has a single endpoint (%s): the API server is not highly "+
			"available, so each of its restarts (an upgrade, control-plane autoscaling) cuts istiod off", a.Endpoints[0])
		remedy += "To avoid the outages, run a highly available control plane (several API servers behind the " +
			"kubernetes Service; on a managed cluster, a regional control plane) and plan upgrades outside busy hours. "
	default:
		fmt.Fprintf(&msg, "; the kubernetes Service in default has %d endpoints (%s): one API server restarting does not "+
			"explain it", n, strings.Join(a.Endpoints, ", "))
		remedy += "With several API servers, look at the path from istiod to the kubernetes Service address in the errors " +
			"(the node's service proxy, network policies) and at the API servers' own health and load. "
	}
	var replicas, ready int32
	for _, d := range a.Istiod {
		replicas += d.Replicas
		ready += d.Ready
	}
	switch {
	case a.IstiodError != "":
		fmt.Fprintf(&msg, "; istiod's Deployments could not be read (%s)", a.IstiodError)
	case len(a.Istiod) == 0:
		msg.WriteString("; no istiod Deployment (" + IstiodSelector + ") was found")
	default:
		fmt.Fprintf(&msg, "; istiod runs %d of %d replica(s) ready", ready, replicas)
		if replicas <= 1 {
			msg.WriteString(", a single one")
			remedy += "Run at least two istiod replicas so that proxies keep a control plane while one reconnects. "
		}
	}
	remedy += "A \"cannot list resource\" error that does not clear points at istiod's RBAC instead."
	return nodecheck.Finding{
		Code: nodecheck.IstiodAPIServerUnreachable, Severity: nodecheck.SeverityWarning,
		Message: msg.String(), Remedy: remedy,
		Evidence: map[string]any{"outage": o, "sampleNodes": o.SampleNodes(), "apiServer": a},
	}, true
}
