package logscan

import (
	"context"
	"fmt"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Check is the node check over logs: each run is one scanner pass, and its findings are the
// conditions held after it.
type Check struct {
	Scanner *Scanner
}

var _ nodecheck.NodeCheck = (*Check)(nil)

// Name names the check in reports and metrics.
func (c *Check) Name() string { return "logs" }

// RuleNames names the scanner's rules, in their file's order (the metrics' rule label values).
func (c *Check) RuleNames() []string {
	rules := c.Scanner.cfg.Rules.Rules()
	names := make([]string, len(rules))
	for i, r := range rules {
		names[i] = r.Name
	}
	return names
}

// CheckNode scans what the node logged since the last run and reports the conditions.
func (c *Check) CheckNode(ctx context.Context) (nodecheck.Result, error) {
	stats, err := c.Scanner.Scan(ctx)
	if err != nil {
		return nodecheck.Result{Detail: stats}, fmt.Errorf("scanning node logs: %w", err)
	}
	return nodecheck.Result{Findings: c.Scanner.Findings(c.Scanner.cfg.Now()), Detail: stats}, nil
}
