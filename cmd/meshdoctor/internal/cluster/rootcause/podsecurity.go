package rootcause

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// reasonFailedCreate is the reason controllers (ReplicaSet, Job, DaemonSet, StatefulSet) give the
// Warning event they write when the API server refuses a pod they create.
const reasonFailedCreate = "FailedCreate"

// psaRefusal finds Pod Security Admission's refusal in an event message and the level it
// enforced: `… is forbidden: violates PodSecurity "baseline:latest": non-default capabilities …`.
var psaRefusal = regexp.MustCompile(`violates PodSecurity "([^"]+)"`)

// maxOwners bounds the owners a namespace's evidence cites; the rest are counted.
const maxOwners = 5

// PodSecurity folds namespaces and FailedCreate events into the namespaces where Pod Security
// Admission refuses Istio's injected pods: their istio-init asks for NET_ADMIN and NET_RAW, which
// the baseline and restricted levels forbid, so with istio-init (no istio-cni) such a namespace
// cannot run an injected pod. It keeps only namespaces with injection or an enforce level, and a
// bounded list of owners per namespace.
type PodSecurity struct {
	namespaces map[string]*namespaceSecurity
}

type namespaceSecurity struct {
	Name           string
	Injection      string // the label that enables injection, "" when none does
	Enforce        string
	EnforceVersion string
	// Owners are the first maxOwners owners in name order, whatever order the events come in;
	// OtherEvents counts the refusals of the others.
	Owners      map[string]*refusal // by "Kind/name"
	OtherEvents int32
}

// refusal is one owner's FailedCreate events for pods that Pod Security refused.
type refusal struct {
	Owner     string    `json:"owner"`
	Component string    `json:"component,omitempty"`
	Count     int32     `json:"count"`
	FirstSeen time.Time `json:"firstSeen,omitzero"`
	LastSeen  time.Time `json:"lastSeen,omitzero"`
	Level     string    `json:"level,omitempty"`
	Message   string    `json:"message"`
}

// NewPodSecurity returns an empty fold.
func NewPodSecurity() *PodSecurity {
	return &PodSecurity{namespaces: map[string]*namespaceSecurity{}}
}

// AddNamespace records a namespace's injection and Pod Security labels.
func (p *PodSecurity) AddNamespace(ns *corev1.Namespace) {
	inj := injectionLabel(ns.Labels)
	enforce := ns.Labels[labelEnforce]
	if inj == "" && enforce == "" {
		return
	}
	s := p.namespace(ns.Name)
	s.Injection, s.Enforce, s.EnforceVersion = inj, enforce, ns.Labels[labelEnforceVersion]
}

// injectionLabel names the label that turns sidecar injection on for a namespace, as Istio's
// injector webhooks select them: istio-injection=enabled, or a revision label unless
// istio-injection=disabled.
func injectionLabel(l map[string]string) string {
	switch {
	case l[labelInjection] == "enabled":
		return labelInjection + "=enabled"
	case l[labelRevision] != "" && l[labelInjection] != "disabled":
		return labelRevision + "=" + l[labelRevision]
	}
	return ""
}

func (p *PodSecurity) namespace(name string) *namespaceSecurity {
	s, ok := p.namespaces[name]
	if !ok {
		s = &namespaceSecurity{Name: name, Owners: map[string]*refusal{}}
		p.namespaces[name] = s
	}
	return s
}

// AddEvent records a controller's FailedCreate event when Pod Security refused an injected pod
// (the message names istio-init); other events are ignored.
func (p *PodSecurity) AddEvent(ev *corev1.Event) {
	if ev.Reason != reasonFailedCreate || !strings.Contains(ev.Message, `"`+containerIstioInit+`"`) {
		return
	}
	m := psaRefusal.FindStringSubmatch(ev.Message)
	if m == nil {
		return
	}
	ns := ev.InvolvedObject.Namespace
	if ns == "" {
		ns = ev.Namespace
	}
	s := p.namespace(ns)
	owner := ev.InvolvedObject.Kind + "/" + ev.InvolvedObject.Name
	count := ev.Count
	if ev.Series != nil && ev.Series.Count > count {
		count = ev.Series.Count
	}
	count = max(count, 1)
	first, last := eventTimes(ev)
	r, ok := s.Owners[owner]
	if !ok {
		if len(s.Owners) >= maxOwners {
			last := slices.Max(slices.Collect(maps.Keys(s.Owners)))
			if owner > last {
				s.OtherEvents += count
				return
			}
			s.OtherEvents += s.Owners[last].Count
			delete(s.Owners, last)
		}
		r = &refusal{Owner: owner, FirstSeen: first}
		s.Owners[owner] = r
	}
	r.Count += count
	if !first.IsZero() && (r.FirstSeen.IsZero() || first.Before(r.FirstSeen)) {
		r.FirstSeen = first
	}
	if r.LastSeen.IsZero() || !last.Before(r.LastSeen) {
		r.LastSeen, r.Message, r.Level = last, ev.Message, m[1]
		r.Component = ev.Source.Component
		if r.Component == "" {
			r.Component = ev.ReportingController
		}
	}
}

// eventTimes reads an event's first and last occurrence, whichever API wrote it.
func eventTimes(ev *corev1.Event) (first, last time.Time) {
	first, last = ev.FirstTimestamp.Time, ev.LastTimestamp.Time
	if first.IsZero() {
		first = ev.EventTime.Time
	}
	if ev.Series != nil && ev.Series.LastObservedTime.After(last) {
		last = ev.Series.LastObservedTime.Time
	}
	if last.IsZero() {
		last = first
	}
	return first.UTC(), last.UTC()
}

// blocks reports whether a Pod Security level forbids istio-init's NET_ADMIN and NET_RAW.
func blocks(level string) bool {
	level, _, _ = strings.Cut(level, ":")
	return level == "baseline" || level == "restricted"
}

// Findings returns one PodSecurityBlocksInit per namespace where injected pods are refused: an
// error where controllers' FailedCreate events show it happening, a warning where the namespace's
// labels and the absence of istio-cni say that the next injected pod will be refused. In
// namespace order.
func (p *PodSecurity) Findings(cni CNIInstall) []nodecheck.Finding {
	var out []nodecheck.Finding
	for _, name := range slices.Sorted(maps.Keys(p.namespaces)) {
		s := p.namespaces[name]
		refused := len(s.Owners) > 0
		if !refused && (s.Injection == "" || !blocks(s.Enforce) || cni != CNINotInstalled) {
			continue
		}
		out = append(out, s.finding(cni))
	}
	return out
}

func (s *namespaceSecurity) finding(cni CNIInstall) nodecheck.Finding {
	owners := slices.SortedFunc(maps.Values(s.Owners), func(a, b *refusal) int { return strings.Compare(a.Owner, b.Owner) })
	ev := map[string]any{"namespace": s.Name, "istioCNI": cni}
	if s.Injection != "" {
		ev["injection"] = s.Injection
	}
	level := s.Enforce
	if level != "" {
		ev["enforce"] = s.Enforce
		if s.EnforceVersion != "" {
			ev["enforceVersion"] = s.EnforceVersion
			level += ":" + s.EnforceVersion
		}
	}
	var msg strings.Builder
	fmt.Fprintf(&msg, "namespace %s", s.Name)
	switch {
	case s.Injection != "":
		fmt.Fprintf(&msg, " has sidecar injection on (%s)", s.Injection)
	default:
		msg.WriteString(" has injected pods")
	}
	switch {
	case s.Enforce != "":
		fmt.Fprintf(&msg, " and enforces Pod Security %q, which forbids istio-init's NET_ADMIN and NET_RAW", level)
	case len(owners) > 0:
		// No label: the API server's default level (its AdmissionConfiguration) enforced it.
		fmt.Fprintf(&msg, " and the cluster's default Pod Security level (%q) forbids istio-init's NET_ADMIN and NET_RAW", owners[0].Level)
	}
	switch cni {
	case CNINotInstalled:
		msg.WriteString("; istio-cni is not installed, so injected pods carry istio-init")
	case CNIInstalled:
		if len(owners) > 0 {
			msg.WriteString("; istio-cni runs in the cluster, yet the injector still adds istio-init (CNI is not enabled in the injection)")
		}
	}
	f := nodecheck.Finding{Code: nodecheck.PodSecurityBlocksInit, Evidence: ev}
	if len(owners) == 0 {
		f.Severity = nodecheck.SeverityWarning
		msg.WriteString(": the next injected pod created here will be refused (no FailedCreate event seen yet)")
	} else {
		f.Severity = nodecheck.SeverityError
		var total int32
		names := make([]string, 0, len(owners))
		for _, o := range owners {
			total += o.Count
			names = append(names, o.Owner)
		}
		ev["refusals"] = owners
		who := strings.Join(names, ", ")
		if s.OtherEvents > 0 {
			ev["otherOwnersEvents"] = s.OtherEvents
			total += s.OtherEvents
			who += " and other owners"
		}
		last := owners[0]
		for _, o := range owners[1:] {
			if o.LastSeen.After(last.LastSeen) {
				last = o
			}
		}
		fmt.Fprintf(&msg, ": pods are refused at creation, %d FailedCreate event(s) from %s, the last at %s: %s",
			total, who, last.LastSeen.Format(time.RFC3339), last.Message)
	}
	f.Message = msg.String()
	f.Remedy = "Switch to the Istio CNI plugin (install istio-cni and enable it for injection, e.g. istioctl install " +
		"--set components.cni.enabled=true): it sets up the redirection from the node, so injected pods need no " +
		"NET_ADMIN or NET_RAW and pass the baseline level. Otherwise label the namespace " +
		"pod-security.kubernetes.io/enforce=privileged, which gives up pod security there. The owners create " +
		"their pods again on their own once admission allows them."
	return f
}
