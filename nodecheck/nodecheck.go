// Package nodecheck holds what every meshdoctor check shares.
//
// That is the Target a check looks at (one pod, or one network namespace), the Finding it
// produces with the codes of the design contract, the Check interface, and the Report that
// `meshdoctor check` prints and the agent serves.
package nodecheck

import (
	"context"
	"time"
)

// Severity says how bad a finding is. A pod with at least one error finding is broken.
type Severity string

// Severities, as in the JSON report.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
	SeverityInfo    Severity = "info"
)

// Code names a root cause. Codes are CamelCase like Kubernetes event reasons, are metric label
// values, and keep their meaning forever (DESIGN.md).
type Code string

// The finding codes of the contract.
const (
	RedirectRulesMissing       Code = "RedirectRulesMissing"
	RedirectRulesIncomplete    Code = "RedirectRulesIncomplete"
	RedirectRulesMismatch      Code = "RedirectRulesMismatch"
	IptablesBackendMismatch    Code = "IptablesBackendMismatch"
	InitContainerFailed        Code = "InitContainerFailed"
	InitMissingNetAdmin        Code = "InitMissingNetAdmin"
	PodSecurityBlocksInit      Code = "PodSecurityBlocksInit"
	IstioCNINotInstalled       Code = "IstioCNINotInstalled"
	IstioCNIIncomplete         Code = "IstioCNIIncomplete"
	IstioCNINodeNotReady       Code = "IstioCNINodeNotReady"
	IstioCNIErrors             Code = "IstioCNIErrors"
	NsenterErrors              Code = "NsenterErrors"
	IstiodAPIServerUnreachable Code = "IstiodAPIServerUnreachable"
	ProxyNotReady              Code = "ProxyNotReady"
	AppStartedBeforeProxy      Code = "AppStartedBeforeProxy"
	ProxyUIDMismatch           Code = "ProxyUIDMismatch"
	CaptureIntentDrift         Code = "CaptureIntentDrift"
	InitArgsUnknownFlag        Code = "InitArgsUnknownFlag"
	NetnsNotPods               Code = "NetnsNotPods"
	CaptureTargetNotListening  Code = "CaptureTargetNotListening"
	CaptureBypassed            Code = "CaptureBypassed"
	CaptureExclusionIgnored    Code = "CaptureExclusionIgnored"
	SocketLBBeforeCapture      Code = "SocketLBBeforeCapture"
	NetfilterFeatureMissing    Code = "NetfilterFeatureMissing"
	IstioCNINotInChain         Code = "IstioCNINotInChain"
	AmbientProbeSetMissingPod  Code = "AmbientProbeSetMissingPod"
	AmbientHostRulesMissing    Code = "AmbientHostRulesMissing"
	PodCreatedBeforeIstioCNI   Code = "PodCreatedBeforeIstioCNI"
	NodeNftTooOld              Code = "NodeNftTooOld"
)

// AllCodes lists every code, in the contract's order, so reporters can initialise their series.
func AllCodes() []Code {
	return []Code{
		RedirectRulesMissing, RedirectRulesIncomplete, RedirectRulesMismatch, IptablesBackendMismatch,
		InitContainerFailed, InitMissingNetAdmin, PodSecurityBlocksInit, IstioCNINotInstalled,
		IstioCNIIncomplete, IstioCNINodeNotReady, IstioCNIErrors, NsenterErrors,
		IstiodAPIServerUnreachable, ProxyNotReady, AppStartedBeforeProxy,
		ProxyUIDMismatch, CaptureIntentDrift, InitArgsUnknownFlag, NetnsNotPods,
		CaptureTargetNotListening, CaptureBypassed, CaptureExclusionIgnored,
		SocketLBBeforeCapture, NetfilterFeatureMissing, IstioCNINotInChain, AmbientProbeSetMissingPod,
		AmbientHostRulesMissing, PodCreatedBeforeIstioCNI, NodeNftTooOld,
	}
}

// Finding is one diagnosed problem with the evidence that shows it and what to do about it.
type Finding struct {
	Code     Code           `json:"code"`
	Severity Severity       `json:"severity"`
	Message  string         `json:"message"`
	Remedy   string         `json:"remedy,omitempty"`
	Evidence map[string]any `json:"evidence,omitempty"`
	// Component names the node component a pod finding implicates (ComponentIstioCNI), so that
	// a reporter can join it with that component's node-level findings in the same report.
	Component string `json:"component,omitempty"`
}

// ComponentIstioCNI is the istio-cni plugin and node agent: they write the capture rules of pods in
// CNI mode (istio-validation instead of istio-init) and of ambient pods.
const ComponentIstioCNI = "istio-cni"

// ComponentZtunnel is ambient mode's node proxy: it listens inside every enrolled pod's network
// namespace, behind the rules istio-cni wrote there.
const ComponentZtunnel = "ztunnel"

// Target is what a check looks at: one pod sandbox on the node, or a bare network namespace given
// with --netns. Discovery fills what it knows; checks must cope with empty fields.
type Target struct {
	Namespace string
	Name      string
	UID       string
	// Netns is the network namespace path as the host sees it (under --host-root when set).
	Netns string
	// Annotations are the pod's annotations: how the injector meant capture to be set up.
	Annotations map[string]string

	// The fields below are filled by pod discovery (nodecheck/discover); a bare --netns target
	// has none of them.

	// SandboxID is the runtime's id of the pod sandbox.
	SandboxID string
	// IP is the pod's primary IP as the runtime reports it.
	IP string
	// IPs are all the pod's IPs as the runtime reports them, IP first (a dual-stack pod has one of
	// each family). They are the addresses of the pod's primary network only: an interface that
	// multus or another meta-plugin attached besides it carries addresses the runtime never lists.
	IPs []string
	// HostNetwork is true for a pod in the node's network namespace (never captured by Istio).
	HostNetwork bool
	// Labels are the pod's labels (istio.io/dataplane-mode enrols a pod in ambient).
	Labels map[string]string
	// Containers are the pod's containers, the latest attempt of each.
	Containers []Container
	// SkipReason, when set, says why the pod is not meant to be captured (no sidecar, not in
	// ambient, host network): no check runs and the pod's verdict is skipped.
	SkipReason string
	// StartingUp, when set, says why the pod's capture cannot be judged yet: it is starting and
	// the init container that writes its rules (istio-init) has not run to completion. The pod's
	// verdict is unknown with this reason, never broken; istio-init's exit triggers its check.
	StartingUp string
	// CNIExcluded says why istio-cni leaves the pod alone, when it does: its namespace is in the
	// plugin's exclude_namespaces (discover.ApplyCNIExclusions).
	CNIExcluded string
	// CNINotInChain says why istio-cni is not in the pod's CNI chain at all, when it is not: the
	// node's runtime networks pods through multus and the pod's annotation does not attach
	// istio-cni's network (discover.ApplyMultusAttachment).
	CNINotInChain string
	// IstioCNIStartedAt is when the node's istio-cni-node pod came up (istiocni.AgentStartedAt);
	// zero when unknown. A CNI-mode pod networked before it had no istio-cni to write its rules.
	IstioCNIStartedAt time.Time
	// CNIChainGap, when set, is the window of the node's CNI chain history (nodecheck/cnichain)
	// in which the pod was networked while the chain the runtime used had no istio-cni.
	CNIChainGap *CNIChainGap
	// CNIMode is true when the istio-cni plugin, not istio-init, wrote the pod's sidecar rules:
	// discovery sees an istio-validation init container and no istio-init.
	CNIMode bool
	// ProxyUser is the user and group istio-proxy runs as, from its OCI spec; nil when unknown.
	ProxyUser *User
	// Cgroup is the pod's cgroup v2 directory as this process can open it (the sandbox process's
	// cgroup, or the pod-level cgroup above it when kubelet's naming shows one); empty when
	// unknown (a cgroup v1-only node, no cgroup2 mount, no sandbox process).
	Cgroup string
	// CgroupError, when Cgroup is empty, says why discovery could not find it.
	CgroupError string

	// DiscoveryError, when set, is what discovery could not learn about the pod (its sandbox was
	// removed while being read, the runtime failed to answer). Checks still run on what is known;
	// unless one proves the pod broken, its verdict is unknown with this reason.
	DiscoveryError string
}

// User is a process's user and group ids. GID is -1 when only the user is known.
type User struct {
	UID int64 `json:"uid"`
	GID int64 `json:"gid"`
}

// ContainerRole says what a container is for in the pod.
type ContainerRole string

// Container roles.
const (
	// RoleInit is an init container that runs to completion before the others (istio-init,
	// istio-validation).
	RoleInit ContainerRole = "init"
	// RoleSidecar is istio-proxy, as a regular container or as a native sidecar (an init
	// container with restartPolicy Always).
	RoleSidecar ContainerRole = "sidecar"
	// RoleApp is any other container.
	RoleApp ContainerRole = "app"
)

// ContainerState is the runtime's state of a container.
type ContainerState string

// Container states, as CRI names them.
const (
	ContainerCreated ContainerState = "created"
	ContainerRunning ContainerState = "running"
	ContainerExited  ContainerState = "exited"
	ContainerUnknown ContainerState = "unknown"
)

// Container is one container of a pod as the runtime reports it.
type Container struct {
	Name  string         `json:"name"`
	ID    string         `json:"id"`
	Role  ContainerRole  `json:"role"`
	Image string         `json:"image,omitempty"`
	State ContainerState `json:"state"`
	// ExitCode, Reason and Message are set once the container has exited.
	ExitCode int32  `json:"exitCode"`
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message,omitempty"`
	// Attempt is kubelet's restart count of the container: 0 on its first run.
	Attempt    uint32    `json:"attempt"`
	CreatedAt  time.Time `json:"createdAt,omitzero"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// Capabilities are the effective capabilities of the container's process from its OCI
	// spec ("CAP_NET_ADMIN"…); nil when the runtime did not give the spec, empty when it has none.
	Capabilities []string `json:"capabilities"`
	// UID and GID are the process's user and group from the OCI spec; -1 when unknown.
	UID int64 `json:"uid"`
	GID int64 `json:"gid"`
	// Args and Env are the process's argv and environment from the OCI spec, kept only for Istio's
	// init containers (what istio-init and istio-validation were told); never serialised, since a
	// container's environment may hold secrets.
	Args []string `json:"-"`
	Env  []string `json:"-"`
}

// Container returns the pod's container with that name, or nil.
func (t Target) Container(name string) *Container {
	for i := range t.Containers {
		if t.Containers[i].Name == name {
			return &t.Containers[i]
		}
	}
	return nil
}

// ID names the target for logs and messages: "ns/name", or the netns path for a bare netns.
func (t Target) ID() string {
	if t.Name != "" {
		return t.Namespace + "/" + t.Name
	}
	return t.Netns
}

// Result is what one check found for one target.
type Result struct {
	Findings []Finding
	// Capture is set by the check that read the capture rules.
	Capture *Capture
	// Detail is check-specific data for the debug endpoint (e.g. the raw rules read).
	Detail any
}

// Check is one diagnosis over a target. Implementations hold their narrow reader of the node and
// are safe for concurrent use. An error means the check could not run (the verdict becomes unknown
// unless another check proves the pod broken); a problem found is a Finding, not an error.
type Check interface {
	Name() string
	Check(ctx context.Context, target Target) (Result, error)
}

// NodeCheck is a diagnosis of the node itself rather than of one pod (istio-cni's install state,
// log evidence). Its findings go to the report's top-level findings.
type NodeCheck interface {
	Name() string
	CheckNode(ctx context.Context) (Result, error)
}

// Verdict is the one-word state of a pod.
type Verdict string

// Verdicts of the report.
const (
	VerdictOK      Verdict = "ok"
	VerdictBroken  Verdict = "broken"
	VerdictUnknown Verdict = "unknown"
	VerdictSkipped Verdict = "skipped"
)

// Capture says how traffic is captured in a pod and where the rules live.
type Capture struct {
	// Mode is sidecar-redirect, sidecar-tproxy, ambient or none.
	Mode string `json:"mode"`
	// Backend is nft, legacy, native-nftables, mixed or none.
	Backend string `json:"backend"`
	// Intent says where the expected rules came from: init-args (istio-init's argv and env),
	// annotations, or defaults.
	Intent string `json:"intent,omitempty"`
	// VerifiedBy says what proved the capture: VerifiedByRules or VerifiedByTraffic; empty when
	// nothing did.
	VerifiedBy string `json:"verifiedBy,omitempty"`
}

// What proved a pod's capture (Capture.VerifiedBy). Only traffic is proof that packets meet the
// rules: a rule elsewhere can defeat capture while every Istio rule reads right.
const (
	// VerifiedByRules: the rules were read and compared with what Istio's rule writer was told.
	VerifiedByRules = "rules"
	// VerifiedByTraffic: the rules compared, and a traffic canary saw the namespace send a new
	// connection where capture should take it.
	VerifiedByTraffic = "rules+traffic"
)

// CheckRun records how one check went on one target, for metrics and the debug endpoint.
type CheckRun struct {
	Check    string        `json:"check"`
	Result   string        `json:"result"` // ok, findings, error
	Duration time.Duration `json:"durationNs"`
	Error    string        `json:"error,omitempty"`
}

// PodReport is one pod's (or one bare netns's) part of the report.
type PodReport struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	UID       string     `json:"uid"`
	Netns     string     `json:"netns"`
	Verdict   Verdict    `json:"verdict"`
	Reason    string     `json:"reason,omitempty"`
	Capture   Capture    `json:"capture"`
	Findings  []Finding  `json:"findings"`
	Checks    []CheckRun `json:"checks,omitempty"`
}

// Report is the whole node's diagnosis: what `check -o json` prints and `/debug/report` serves.
type Report struct {
	Node string      `json:"node"`
	Pods []PodReport `json:"pods"`
	// Findings are node-level: istio-cni install state, log evidence.
	Findings []Finding `json:"findings"`
}

// HasErrors reports whether any pod or node finding has severity error.
func (r *Report) HasErrors() bool {
	for _, f := range r.Findings {
		if f.Severity == SeverityError {
			return true
		}
	}
	for _, p := range r.Pods {
		for _, f := range p.Findings {
			if f.Severity == SeverityError {
				return true
			}
		}
	}
	return false
}

// CNIChainGap is a window in which the CNI config the runtime used did not chain istio-cni.
type CNIChainGap struct {
	// From is when the chain lost istio-cni (as near as the source tells: the change seen, or
	// the file's modification time); Until is when it had it again, zero while it still has not.
	From  time.Time `json:"from"`
	Until time.Time `json:"until,omitzero"`
	// Primary is the config file the runtime used in the window ("" for no config at all).
	Primary string `json:"primary,omitempty"`
	// Source says how the window is known: "inotify" (the agent saw the change) or "mtime"
	// (rebuilt from the files' modification times).
	Source string `json:"source"`
}
