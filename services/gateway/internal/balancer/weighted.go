package balancer

import "sync"

// WeightedPicker is nginx's smooth weighted round robin: on every pick each
// candidate's current weight grows by its weight, the largest is chosen and
// lowered by the sum of the weights. Weights 5/1/1 give a a b a c a a
// rather than a a a a a b c, so a heavy upstream never gets a burst.
// Only the candidates of the pick take part, so an unavailable upstream
// neither gains nor loses turns. The small state is guarded by a mutex.
type WeightedPicker struct {
	mu      sync.Mutex
	current map[*Upstream]int
}

// NewWeightedPicker returns a smooth weighted round robin picker.
func NewWeightedPicker() *WeightedPicker {
	return &WeightedPicker{current: make(map[*Upstream]int)}
}

// Pick returns the candidate with the largest current weight.
func (p *WeightedPicker) Pick(cands []*Upstream) *Upstream {
	return p.pickWith(cands, nil)
}

// pickWith is Pick with extra weight for the candidates standing in for
// primaries that are down (a standby's own weight is 0).
func (p *WeightedPicker) pickWith(cands []*Upstream, extra map[*Upstream]int) *Upstream {
	p.mu.Lock()
	defer p.mu.Unlock()
	var best *Upstream
	bestW, total := 0, 0
	for _, u := range cands {
		w := u.Weight
		if u.standby {
			w = 0 // it takes no share of its own
		}
		w = max(w+extra[u], 1)
		total += w
		cw := p.current[u] + w
		p.current[u] = cw
		if best == nil || cw > bestW {
			best, bestW = u, cw
		}
	}
	p.current[best] = bestW - total
	return best
}
