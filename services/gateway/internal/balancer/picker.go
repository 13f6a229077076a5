package balancer

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Strategy names accepted in routing.load_balance_strategy.
const (
	RoundRobin       = "round_robin"
	Weighted         = "weighted"
	LeastConnections = "least_connections"
	LatencyBased     = "latency_based"
	LeastLoad        = "least_load"
)

// Picker is a load-balancing strategy. Pick returns one of cands, which is
// never empty and holds only available upstreams; it must not keep cands.
// Implementations are safe for concurrent use.
type Picker interface {
	Pick(cands []*Upstream) *Upstream
}

// RetryPicker is a Picker whose picks for a request's retries (another
// try after a failed one) differ from its first picks: a rotation that a
// retry's pick must not advance.
type RetryPicker interface {
	Picker
	PickRetry(cands []*Upstream) *Upstream
}

// Rand is the randomness a Picker draws from; *math/rand.Rand satisfies it
// (but is not safe for concurrent use: wrap it, or use the default).
type Rand interface {
	Intn(n int) int
}

// Clock tells the time; tests pass a fake one.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// SystemClock is the wall clock.
var SystemClock Clock = systemClock{}

type globalRand struct{}

func (globalRand) Intn(n int) int { return rand.IntN(n) }

// GlobalRand draws from math/rand/v2's global source; it is safe for
// concurrent use.
var GlobalRand Rand = globalRand{}

// NewPicker returns the strategy called name ("" means round_robin).
// loadMaxAge is how old a scrape may be before least_load falls back to
// least_connections.
func NewPicker(name string, rnd Rand, clock Clock, loadMaxAge time.Duration) (Picker, error) {
	switch name {
	case "", RoundRobin:
		return &RoundRobinPicker{}, nil
	case Weighted:
		return NewWeightedPicker(), nil
	case LeastConnections:
		return &LeastConnPicker{Rand: rnd}, nil
	case LatencyBased:
		return &LatencyPicker{Rand: rnd}, nil
	case LeastLoad:
		return &LeastLoadPicker{Rand: rnd, Clock: clock, MaxAge: loadMaxAge}, nil
	default:
		return nil, fmt.Errorf("unknown load_balance_strategy %q (want round_robin, weighted, least_connections, latency_based or least_load)", name)
	}
}
