package intent

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiopod"
)

// Source says where a pod's capture intent came from (the report's capture.intent).
type Source string

// Sources of the intent.
const (
	// SourceInitArgs: istio-init's argv and environment as the runtime started it (istio-init
	// mode; the mesh-wide values are only there).
	SourceInitArgs Source = "init-args"
	// SourceAnnotations: the pod's annotations (CNI mode, where the injector writes the resolved
	// values back; or a pod whose istio-init spec the runtime did not give).
	SourceAnnotations Source = "annotations"
	// SourceDefaults: nothing said how the pod is captured; Istio's defaults.
	SourceDefaults Source = "defaults"
)

// Intent is how a pod was meant to be captured, where that came from, and where its sources
// disagree.
type Intent struct {
	Config Config `json:"config"`
	Source Source `json:"source"`
	// InitContainer names the container whose argv was read (istio-init, or istio-validation
	// as a cross-check in CNI mode); Init is what it was told.
	InitContainer string    `json:"initContainer,omitempty"`
	Init          *InitArgs `json:"init,omitempty"`
	// Drift lists annotations that decide capture and say otherwise than the init container's
	// args: edited after injection.
	Drift []Drift `json:"drift,omitempty"`
}

// Drift is one annotation that disagrees with the value istio-iptables was given.
type Drift struct {
	Annotation      string `json:"annotation"`
	AnnotationValue string `json:"annotationValue"`
	Flag            string `json:"flag"`
	ArgValue        string `json:"argValue"`
}

// Resolve finds a pod's capture intent: in istio-init mode istio-init's argv and environment are
// the oracle, in CNI mode the annotations are (istio-validation's argv cross-checks them), and a
// pod with neither gets its annotations with Istio's defaults. Malformed input is an error naming
// where it is.
func Resolve(t nodecheck.Target) (Intent, error) {
	initName := istiopod.ContainerIstioInit
	if t.CNIMode {
		initName = istiopod.ContainerIstioValidation
	}
	var in Intent
	if c := t.Container(initName); c != nil && len(c.Args) > 0 {
		args, err := ParseInitArgs(c.Args, c.Env)
		if err != nil {
			return in, fmt.Errorf("reading %s's command line: %w", initName, err)
		}
		in.InitContainer, in.Init = initName, &args
		in.Drift = drift(t.Annotations, args)
		if !t.CNIMode {
			if in.Config, err = FromInitArgs(args, false); err != nil {
				return in, fmt.Errorf("%s: %w", initName, err)
			}
			in.Source = SourceInitArgs
			return in, nil
		}
	}
	cfg, err := fromTargetAnnotations(t)
	if err != nil {
		return in, err
	}
	in.Config, in.Source = cfg, SourceDefaults
	for k := range t.Annotations {
		if decidesCapture(k) {
			in.Source = SourceAnnotations
			break
		}
	}
	if t.CNIMode {
		in.Source = SourceAnnotations // the injector wrote what it resolved onto the pod
	}
	return in, nil
}

// annotationFlags pairs each annotation that decides capture with the istio-iptables flag the
// injection template renders it into, and how the two are compared.
var annotationFlags = []struct {
	annotation, flag string
	kind             compareKind
}{
	{istiopod.AnnotationInterceptionMode, "istio-inbound-interception-mode", compareWord},
	{istiopod.AnnotationIncludeOutboundCIDRs, "istio-service-cidr", compareCIDRs},
	{istiopod.AnnotationExcludeOutboundCIDRs, "istio-service-exclude-cidr", compareCIDRs},
	{istiopod.AnnotationIncludeInboundPorts, "istio-inbound-ports", compareSet},
	{istiopod.AnnotationExcludeInboundPorts, "istio-local-exclude-ports", compareSubset},
	{istiopod.AnnotationStatusPort, "istio-local-exclude-ports", compareSubset},
	{istiopod.AnnotationIncludeOutboundPorts, "istio-outbound-ports", compareSet},
	{istiopod.AnnotationExcludeOutboundPorts, "istio-local-outbound-ports-exclude", compareSet},
	{istiopod.AnnotationRerouteInterfaces, "kube-virt-interfaces", compareSet},
	{istiopod.AnnotationKubevirtInterfaces, "kube-virt-interfaces", compareSet},
	{istiopod.AnnotationExcludeInterfaces, "istio-exclude-interfaces", compareSet},
}

type compareKind int

const (
	compareWord   compareKind = iota // one word, case-insensitive
	compareSet                       // the same comma-separated items, in any order
	compareSubset                    // every item of the annotation among the flag's
	compareCIDRs                     // the same CIDRs once masked, or both "*"
)

func decidesCapture(annotation string) bool {
	for _, af := range annotationFlags {
		if af.annotation == annotation {
			return true
		}
	}
	return annotation == istiopod.AnnotationProxyConfig
}

// drift lists the annotations present on the pod that disagree with the init container's args.
func drift(annotations map[string]string, args InitArgs) []Drift {
	var out []Drift
	for _, af := range annotationFlags {
		av, ok := annotations[af.annotation]
		if !ok {
			continue
		}
		if af.annotation == istiopod.AnnotationRerouteInterfaces || af.annotation == istiopod.AnnotationKubevirtInterfaces {
			// The template takes reroute-virtual-interfaces over kubevirtInterfaces.
			if _, both := annotations[istiopod.AnnotationRerouteInterfaces]; both && af.annotation == istiopod.AnnotationKubevirtInterfaces {
				continue
			}
		}
		if af.annotation == istiopod.AnnotationStatusPort && strings.TrimSpace(av) == "0" {
			continue // port 0 turns the status port off: nothing to exclude
		}
		fv := args.Values[af.flag]
		if !agree(af.kind, av, fv) {
			out = append(out, Drift{Annotation: af.annotation, AnnotationValue: av, Flag: "--" + af.flag, ArgValue: fv})
		}
	}
	return append(out, metadataDrift(annotations[istiopod.AnnotationProxyConfig], args)...)
}

// metadataFlags pairs the proxyMetadata variables that decide capture with the flag each sets:
// the injection template renders the pod's proxyMetadata into istio-init's env.
var metadataFlags = []struct{ variable, flag string }{
	{"ISTIO_DUAL_STACK", "dual-stack"},
	{"ISTIO_META_DNS_CAPTURE", "redirect-dns"},
	{"INVALID_DROP", "drop-invalid"},
}

// metadataDrift lists the proxyMetadata of the pod's proxy.istio.io/config that says otherwise
// than the init container's env and args: the annotation edited after injection. A value
// istio-iptables would ignore, or an annotation that does not parse, says nothing here (the
// annotation's own check reports a malformed one).
func metadataDrift(proxyConfig string, args InitArgs) []Drift {
	meta, err := ProxyMetadata(proxyConfig)
	if err != nil || len(meta) == 0 {
		return nil
	}
	var out []Drift
	for _, mf := range metadataFlags {
		av, ok := meta[mf.variable]
		if !ok {
			continue
		}
		want, err := strconv.ParseBool(strings.TrimSpace(av))
		if err != nil {
			continue
		}
		fv := args.Values[mf.flag]
		got, _ := strconv.ParseBool(strings.TrimSpace(fv))
		if got != want {
			out = append(out, Drift{Annotation: istiopod.AnnotationProxyConfig + " proxyMetadata." + mf.variable,
				AnnotationValue: av, Flag: "--" + mf.flag, ArgValue: fv})
		}
	}
	return out
}

func agree(kind compareKind, annotation, flag string) bool {
	switch kind {
	case compareWord:
		return strings.EqualFold(strings.TrimSpace(annotation), strings.TrimSpace(flag))
	case compareSubset:
		have := splitList(flag)
		for _, p := range splitList(annotation) {
			if !slices.Contains(have, p) {
				return false
			}
		}
		return true
	case compareCIDRs:
		return slices.Equal(normalCIDRs(annotation), normalCIDRs(flag))
	}
	a, f := splitList(annotation), splitList(flag)
	slices.Sort(a)
	slices.Sort(f)
	return slices.Equal(slices.Compact(a), slices.Compact(f))
}

// normalCIDRs is a sorted list of masked prefixes ("*" kept as is); what does not parse is kept
// as text, so that two identical typos agree and anything else differs.
func normalCIDRs(list string) []string {
	var out []string
	for _, s := range splitList(list) {
		if p, err := netip.ParsePrefix(s); err == nil {
			s = p.Masked().String()
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
