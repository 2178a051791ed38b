package capture

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// netnsNotPods checks that the network namespace being read is the pod's own: the pod's IP, as
// the runtime reports it, is on one of its interfaces. When it is not (a stale or reused netns
// path, a runtime that points at another sandbox's namespace), every rule read there says nothing
// of the pod. A target without a runtime IP (a bare --netns) is not judged; an IP that does not
// parse is an error.
func netnsNotPods(t nodecheck.Target, addrs []netip.Addr) (nodecheck.Finding, bool, error) {
	if t.IP == "" {
		return nodecheck.Finding{}, false, nil
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(t.IP))
	if err != nil {
		return nodecheck.Finding{}, false, fmt.Errorf("the runtime's IP of %s, %q, is not an address: %w", t.ID(), t.IP, err)
	}
	ip = ip.Unmap()
	var found []string
	for _, a := range addrs {
		if a.Unmap() == ip {
			return nodecheck.Finding{}, false, nil
		}
		found = append(found, a.String())
	}
	return nodecheck.Finding{
		Code:     nodecheck.NetnsNotPods,
		Severity: nodecheck.SeverityError,
		Message: fmt.Sprintf("the network namespace %s is not the pod's: the runtime gives the pod %s, and no interface of "+
			"that namespace has it (%s); its rules say nothing of the pod, so they are not judged", t.Netns, ip, addrList(found)),
		Remedy: "The runtime's netns path for the sandbox points at another namespace (a stale path after a runtime " +
			"restart, a reused or leaked namespace). Compare `crictl inspectp` of the sandbox with the namespace's " +
			"addresses; restart the pod so that it gets a namespace of its own, and report the runtime's state if it recurs.",
		Evidence: map[string]any{"podIP": ip.String(), "netns": t.Netns, "netnsAddresses": found},
	}, true, nil
}

func addrList(addrs []string) string {
	if len(addrs) == 0 {
		return "it has no address"
	}
	return "it has " + strings.Join(addrs, ", ")
}
