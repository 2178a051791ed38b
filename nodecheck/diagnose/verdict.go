package diagnose

import (
	"slices"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// initRootCauses are findings that explain why a pod's capture rules are missing: istio-init could
// not or did not write them.
var initRootCauses = []nodecheck.Code{
	nodecheck.InitMissingNetAdmin,
	nodecheck.InitContainerFailed,
	nodecheck.PodSecurityBlocksInit,
}

// settleRootCauses makes the verdict follow the verified capture: once a pod's rules verify
// (rewritten by a later run of istio-init, a repair, or by hand), a reason why istio-init could not
// write them explains no broken capture any more. It stays, as a warning saying that the pod's next
// start runs istio-init again and can fail the same way.
func settleRootCauses(findings []nodecheck.Finding, captureVerified bool) {
	if !captureVerified {
		return
	}
	for i, f := range findings {
		if f.Severity != nodecheck.SeverityError || !slices.Contains(initRootCauses, f.Code) {
			continue
		}
		findings[i].Severity = nodecheck.SeverityWarning
		findings[i].Message = f.Message + "; the pod's capture rules verify all the same (written later, by another run " +
			"or a repair), so it is captured now, but its next restart runs istio-init again and will fail the same way"
		ev := make(map[string]any, len(f.Evidence)+1)
		for k, v := range f.Evidence {
			ev[k] = v
		}
		ev["captureVerified"] = true
		findings[i].Evidence = ev
	}
}
