package balancer

import (
	"fmt"
	"math/rand"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// seeded returns a deterministic Rand for single-goroutine tests.
func seeded(seed int64) Rand { return rand.New(rand.NewSource(seed)) }

// scripted returns the given values in turn (modulo n), then repeats.
type scripted struct {
	vals []int
	i    int
}

func (s *scripted) Intn(n int) int {
	v := s.vals[s.i%len(s.vals)]
	s.i++
	return v % n
}

// ups builds bare upstreams named a, b, c, … with the given weights.
func ups(weights ...int) []*Upstream {
	out := make([]*Upstream, len(weights))
	for i, w := range weights {
		name := string(rune('a' + i))
		out[i] = &Upstream{
			Name:   name,
			URL:    &url.URL{Scheme: "http", Host: name + ".test"},
			Weight: w,
			clock:  SystemClock,
		}
	}
	return out
}

func counts(picks []*Upstream) map[string]int {
	m := map[string]int{}
	for _, u := range picks {
		m[u.Name]++
	}
	return m
}

func backends(n int) []config.Backend {
	out := make([]config.Backend, n)
	for i := range out {
		out[i] = config.Backend{URL: fmt.Sprintf("http://b%d.test:8000", i), Name: fmt.Sprintf("b%d", i)}
	}
	return out
}

func mustPool(t *testing.T, cfg PoolConfig) *Pool {
	t.Helper()
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
