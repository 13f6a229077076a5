package gateway

import (
	"sync"
	"time"
)

// refusalBudget bounds the events of refusals: requests the gateway
// refused before admitting them or asking any backend (a bad key, a
// limit, a model the key may not use). Any client can make those as fast
// as the gateway answers, and each event is kept in the stream for its
// retention; past the budget they are counted, not published. Each key id
// ("unauthenticated" for the requests of no key) has its own token
// bucket of rate events a second and ten seconds of them in a burst. It is
// safe for concurrent use; the zero value is ready.
type refusalBudget struct {
	mu      sync.Mutex
	buckets map[string]*refusalBucket
}

type refusalBucket struct {
	tokens float64
	at     time.Time
}

// maxRefusalBuckets bounds the buckets kept: past it, the full ones (whose
// keys have not been refused for ten seconds) are dropped.
const maxRefusalBuckets = 10_000

// allow reports whether a refusal of key at now may be published at rate
// events a second.
func (b *refusalBudget) allow(key string, rate float64, now time.Time) bool {
	burst := rate * 10
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.buckets[key]
	if k == nil {
		if b.buckets == nil {
			b.buckets = map[string]*refusalBucket{}
		}
		if len(b.buckets) >= maxRefusalBuckets {
			for id, o := range b.buckets {
				if o.tokens+now.Sub(o.at).Seconds()*rate >= burst {
					delete(b.buckets, id)
				}
			}
		}
		k = &refusalBucket{tokens: burst, at: now}
		b.buckets[key] = k
	}
	if d := now.Sub(k.at); d > 0 {
		k.tokens = min(burst, k.tokens+d.Seconds()*rate)
		k.at = now
	}
	if k.tokens < 1 {
		return false
	}
	k.tokens--
	return true
}
