package auth

import (
	"net/netip"
	"sync"
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

// clientShare: one client may spend 1/clientShare of the look-up budget's
// rate and burst, so that a flood of made-up keys from one client (an IPv4
// address, an IPv6 /64) leaves the rest of it to the new keys of others.
const clientShare = 4

// maxClients is how many clients' budgets are kept in each of two
// generations; a client not seen for two of them starts afresh.
const maxClients = 10000

// clientBudgets are the look-up budgets of single clients: each a
// lookupBudget of 1/clientShare of the whole's rate and burst (at least one
// read). It is safe for concurrent use.
type clientBudgets struct {
	interval, tau int64

	mu       sync.Mutex
	cur, old map[netip.Prefix]*lookupBudget
}

func newClientBudgets(g ledger.GlobalLimit) *clientBudgets {
	interval, burst := g.Emission()
	interval *= clientShare
	burst = max(burst/clientShare, 1)
	return &clientBudgets{interval: int64(interval), tau: int64(interval) * burst, cur: map[netip.Prefix]*lookupBudget{}}
}

// take spends one read of client's budget at now, or reports how long until
// one fits; giveBack returns it. A client without an address has no budget
// of its own.
func (c *clientBudgets) take(client netip.Addr, now time.Time) (time.Duration, bool) {
	b := c.of(client)
	if b == nil {
		return 0, true
	}
	return b.take(now)
}

// giveBack returns a read client took (one that found a key).
func (c *clientBudgets) giveBack(client netip.Addr) {
	if b := c.of(client); b != nil {
		b.tat.Add(-b.interval)
	}
}

// of is client's budget, nil for a client without an address.
func (c *clientBudgets) of(client netip.Addr) *lookupBudget {
	if !client.IsValid() {
		return nil
	}
	bits := 64
	if client = client.Unmap(); client.Is4() {
		bits = 32
	}
	p, _ := client.Prefix(bits)
	c.mu.Lock()
	b := c.cur[p]
	if b == nil {
		if b = c.old[p]; b == nil {
			b = &lookupBudget{interval: c.interval, tau: c.tau}
		}
		if len(c.cur) >= maxClients {
			c.old, c.cur = c.cur, make(map[netip.Prefix]*lookupBudget, maxClients)
		}
		c.cur[p] = b
	}
	c.mu.Unlock()
	return b
}
