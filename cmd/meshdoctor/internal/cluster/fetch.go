package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// fetch reads one node's report through the API server's pod proxy, within Options.Timeout.
func (g *Gatherer) fetch(ctx context.Context, node string, a agentPod) NodeResult {
	r := NodeResult{Node: node, Agent: a.namespace + "/" + a.name}
	if !a.running {
		r.Status = StatusAgentNotRunning
		r.Error = fmt.Sprintf("agent pod %s is %s", r.Agent, a.phase)
		if a.phase == "" || a.ip == "" {
			r.Error = fmt.Sprintf("agent pod %s is %s without an IP", r.Agent, orWord(string(a.phase), "not started"))
		}
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, g.Options.Timeout)
	defer cancel()
	rep, err := g.report(ctx, a)
	if err == nil && g.Enrich != nil {
		g.Enrich(ctx, rep)
	}
	if err != nil {
		r.Status = StatusNotAnswering
		r.Forbidden = apierrors.IsForbidden(err)
		r.Error = describe(ctx, err, g.Options, a)
		return r
	}
	r.Status, r.Report = StatusReported, rep
	return r
}

func (g *Gatherer) report(ctx context.Context, a agentPod) (*nodecheck.Report, error) {
	body, err := g.Client.ProxyGetPod(ctx, a.namespace, a.name, a.port, ReportPath)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	lr := &io.LimitedReader{R: body, N: MaxReportBytes + 1}
	var rep nodecheck.Report
	if err := json.NewDecoder(lr).Decode(&rep); err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("the answer exceeds %d MiB: not a meshdoctor report", MaxReportBytes>>20)
		}
		return nil, fmt.Errorf("not a meshdoctor report: %w", err)
	}
	if rep.Pods == nil && rep.Findings == nil && rep.Node == "" {
		return nil, errors.New("not a meshdoctor report: no node, pods or findings")
	}
	return &rep, nil
}

// describe says why a report could not be read, in the words a person acts on.
func describe(ctx context.Context, err error, o Options, a agentPod) string {
	where := fmt.Sprintf("agent %s/%s port %d", a.namespace, a.name, a.port)
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Sprintf("forbidden: your credentials may not get pods/proxy in namespace %s (%v)", a.namespace, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Sprintf("%s: no answer within %s", where, o.Timeout)
	}
	var se *apierrors.StatusError
	if errors.As(err, &se) {
		// The proxy's own error (the agent refused the connection, or no listener) is in the
		// status' causes; the status' message alone is generic.
		msg := se.ErrStatus.Message
		if d := se.ErrStatus.Details; d != nil {
			for _, c := range d.Causes {
				if c.Message != "" && !strings.Contains(msg, c.Message) {
					msg += ": " + strings.TrimSpace(c.Message)
				}
			}
		}
		return fmt.Sprintf("%s: %s (HTTP %d through the API server's pod proxy; is the agent's --report-address on %s:%d?)",
			where, msg, se.ErrStatus.Code, a.ip, a.port)
	}
	return fmt.Sprintf("%s: %v", where, err)
}

func orWord(s, word string) string {
	if s == "" {
		return word
	}
	return s
}
