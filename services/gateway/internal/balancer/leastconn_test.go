package balancer

import (
	"container/heap"
	"testing"
)

func TestLeastConnAvoidsBusyUpstream(t *testing.T) {
	us := ups(1, 1, 1)
	us[0].Acquire() // a holds a long stream
	p := &LeastConnPicker{Rand: seeded(1)}
	var picks []*Upstream
	for range 1000 {
		u := p.Pick(us)
		u.Acquire()
		picks = append(picks, u)
		u.Release()
	}
	c := counts(picks)
	if c["a"] != 0 {
		t.Errorf("busy upstream got %d picks, want 0", c["a"])
	}
	// Ties between the idle two are broken at random, not always b.
	if c["b"] < 400 || c["c"] < 400 {
		t.Errorf("ties not shared: %v", c)
	}
}

func TestLeastConnTieBreakIsUniform(t *testing.T) {
	us := ups(1, 1, 1, 1)
	p := &LeastConnPicker{Rand: seeded(7)}
	var picks []*Upstream
	for range 4000 {
		picks = append(picks, p.Pick(us))
	}
	for name, n := range counts(picks) {
		if n < 850 || n > 1150 {
			t.Errorf("%s got %d of 4000 tie breaks, want ≈1000", name, n)
		}
	}
}

// completion is a request ending at tick end on upstream u.
type completion struct {
	end int
	u   *Upstream
}

type completions []completion

func (h completions) Len() int           { return len(h) }
func (h completions) Less(i, j int) bool { return h[i].end < h[j].end }
func (h completions) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *completions) Push(x any)        { *h = append(*h, x.(completion)) }
func (h *completions) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// TestLeastConnBalancesInFlightWithSlowUpstream runs an event loop on a
// virtual clock: three requests arrive per tick; a's requests last 10× as
// long as b's and c's. Least connections keeps the in-flight counts level,
// so the slow upstream takes far fewer requests.
func TestLeastConnBalancesInFlightWithSlowUpstream(t *testing.T) {
	us := ups(1, 1, 1)
	dur := map[*Upstream]int{us[0]: 60, us[1]: 6, us[2]: 6}
	p := &LeastConnPicker{Rand: seeded(3)}
	var pending completions
	picks := map[string]int{}
	maxSpread := int64(0)
	for tick := range 2000 {
		for pending.Len() > 0 && pending[0].end <= tick {
			heap.Pop(&pending).(completion).u.Release()
		}
		for range 3 {
			u := p.Pick(us)
			u.Acquire()
			picks[u.Name]++
			heap.Push(&pending, completion{end: tick + dur[u], u: u})
		}
		lo, hi := us[0].InFlight(), us[0].InFlight()
		for _, v := range us[1:] {
			lo, hi = min(lo, v.InFlight()), max(hi, v.InFlight())
		}
		maxSpread = max(maxSpread, hi-lo)
	}
	// Round robin would leave ≈60 in flight on a and ≈6 on b and c.
	if maxSpread > 2 {
		t.Errorf("in-flight spread reached %d, want ≤ 2", maxSpread)
	}
	if picks["a"]*5 > picks["b"] || picks["a"]*5 > picks["c"] {
		t.Errorf("slow upstream got %d picks vs %d/%d, want far fewer", picks["a"], picks["b"], picks["c"])
	}
	if picks["a"] == 0 {
		t.Error("slow upstream got no traffic at all")
	}
	t.Logf("picks %v, max in-flight spread %d", picks, maxSpread)
}
