package discover

import (
	"encoding/json"
	"fmt"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Spec is the part of a container's OCI runtime spec that discovery reads: the process's user,
// argv and environment (what istio-init was told), its effective capabilities (what the kernel
// lets istio-init do), and the namespaces.
type Spec struct {
	Process *struct {
		Args []string `json:"args"`
		Env  []string `json:"env"`
		User struct {
			UID uint32 `json:"uid"`
			GID uint32 `json:"gid"`
		} `json:"user"`
		Capabilities *struct {
			Effective []string `json:"effective"`
		} `json:"capabilities"`
	} `json:"process"`
	Linux *struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
	} `json:"linux"`
}

// ParseSpec reads an OCI runtime spec (JSON).
func ParseSpec(data []byte) (Spec, error) {
	var s Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return Spec{}, fmt.Errorf("reading OCI runtime spec: %w", err)
	}
	return s, nil
}

// NetworkNamespace returns the spec's network namespace path, and whether it has a network
// namespace at all: a spec without one runs in the host's network (hostNetwork).
func (s Spec) NetworkNamespace() (path string, own bool) {
	if s.Linux == nil {
		return "", false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path, true
		}
	}
	return "", false
}

// ApplyTo sets the container's capabilities, user, argv and environment from the spec.
func (s Spec) ApplyTo(c *nodecheck.Container) {
	if s.Process == nil {
		return
	}
	c.UID, c.GID = int64(s.Process.User.UID), int64(s.Process.User.GID)
	c.Args, c.Env = s.Process.Args, s.Process.Env
	caps := []string{}
	if s.Process.Capabilities != nil && s.Process.Capabilities.Effective != nil {
		caps = s.Process.Capabilities.Effective
	}
	c.Capabilities = caps
}

// Metadata is the part of the CRI's PodSandboxConfig and ContainerConfig that discovery reads, in
// the JSON containerd keeps in its sandbox and container metadata extensions (proto field names).
type Metadata struct {
	Metadata struct {
		Name      string `json:"name"`
		UID       string `json:"uid"`
		Namespace string `json:"namespace"`
		Attempt   uint32 `json:"attempt"`
	} `json:"metadata"`
	Image struct {
		Image string `json:"image"`
	} `json:"image"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	Linux       struct {
		SecurityContext struct {
			NamespaceOptions struct {
				// Network is CRI's NamespaceMode: 0 POD, 1 CONTAINER, 2 NODE.
				Network int `json:"network"`
			} `json:"namespace_options"`
		} `json:"security_context"`
	} `json:"linux"`
}

// NamespaceModeNode is CRI's NamespaceMode NODE: the pod uses the host's network.
const NamespaceModeNode = 2
