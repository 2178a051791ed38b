package logscan

import (
	"time"

	"github.com/meshdoctor/meshdoctor/nodecheck"
)

// Active returns the finding of a condition with this code that holds now, for a pod check that
// links its own finding to it (a proxy that gets no configuration while istiod cannot reach the
// API server): a transient condition not yet cleared, or a persistent one whose evidence is
// within the window. It reads the conditions of the passes already made; it does not scan.
func (s *Scanner) Active(code nodecheck.Code) (nodecheck.Finding, bool) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == nil {
		return nodecheck.Finding{}, false
	}
	for _, r := range s.cfg.Rules.rules {
		c := s.state.Conditions[r.Name]
		if r.Code != code || c == nil || now.Sub(c.Last) > s.cfg.Window {
			continue
		}
		if r.Kind == Transient && !now.Before(c.Last.Add(time.Duration(r.QuietPeriod))) {
			continue // cleared
		}
		return c.finding(r, now), true
	}
	return nodecheck.Finding{}, false
}
