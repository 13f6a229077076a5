package auth

import (
	"math"
	"sync/atomic"
	"time"
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

// newLookupBudget returns a budget of rate reads a second (> 0) with a
// burst of burst (at least 1; below, the rate rounded up).
func newLookupBudget(rate float64, burst int) *lookupBudget {
	if burst <= 0 {
		burst = max(int(math.Ceil(rate)), 1)
	}
	interval := max(int64(float64(time.Second)/rate), 1)
	return &lookupBudget{interval: interval, tau: interval * int64(burst)}
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
