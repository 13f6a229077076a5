package auth

import (
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// LookupsLimitedError is what RedisStore.LookupHash returns, without
// reading Redis, for a secret it has not seen while its reads of such
// secrets are over their rate (the global rate limit's): a flood of
// made-up keys, each a new secret, is read from Redis no faster than the
// gateway admits requests.
type LookupsLimitedError struct {
	// RetryAfter is when the next read would fit.
	RetryAfter time.Duration
}

func (e *LookupsLimitedError) Error() string {
	return "too many look-ups of keys not seen before; retry after " + e.RetryAfter.String()
}

// lookupBudget is a GCRA over the store's clock: rate reads a second with
// a burst of burst. It is lock-free and safe for concurrent use.
type lookupBudget struct {
	interval int64 // ns between two reads at the rate
	tau      int64 // ns of burst: burst * interval
	tat      atomic.Int64
}

// newLookupBudget returns a budget of the global limit g's rate and burst
// (g.RPS > 0), as the ledger reads them.
func newLookupBudget(g ledger.GlobalLimit) *lookupBudget {
	interval, burst := g.Emission()
	return &lookupBudget{interval: int64(interval), tau: int64(interval) * burst}
}

// take spends one read at now, or reports how long until one fits.
func (b *lookupBudget) take(now time.Time) (time.Duration, bool) {
	t := now.UnixNano()
	for {
		tat := b.tat.Load()
		next := max(tat, t) + b.interval
		if wait := next - t - b.tau; wait > 0 {
			return time.Duration(wait), false
		}
		if b.tat.CompareAndSwap(tat, next) {
			return 0, true
		}
	}
}
