package capture

import (
	"fmt"
	"sync"

	"github.com/meshdoctor/meshdoctor/nodecheck/intent"
	"github.com/meshdoctor/meshdoctor/nodecheck/rules"
)

// maxCachedExpectations bounds the cache: a node runs pods of a handful of capture
// configurations, so this is never reached except by a cluster of unusually varied annotations,
// and then the cache simply starts over.
const maxCachedExpectations = 256

// expectedCache keeps the expected rule sets already built: every pod of a Deployment has the same
// configuration, and building (parsing ~30 rule texts per family) costs more than comparing.
// Expected values are never modified after BuildExpected, so they are shared freely.
type expectedCache struct {
	mu    sync.Mutex
	byKey map[string]*Expected
}

func (c *expectedCache) get(cfg intent.Config, family rules.Family, enabled bool) *Expected {
	key := fmt.Sprintf("%d|%t|%+v", family, enabled, cfg)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		return e
	}
	if c.byKey == nil || len(c.byKey) >= maxCachedExpectations {
		c.byKey = map[string]*Expected{}
	}
	e := BuildExpected(cfg, family, enabled)
	c.byKey[key] = e
	return e
}
