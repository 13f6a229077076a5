package balancer

import "sync"

// RoundRobinPicker takes the candidates in turn: each pick goes to the
// candidate picked least recently (one never picked first, then the
// first in config order). Turns are kept per upstream rather than as one
// counter taken modulo whatever set of candidates a pick gets, so the
// requests for one model go round the backends serving it whatever other
// models' requests come between them: with one counter, the requests of
// two models with two backends each, taking turns, each went to the same
// backend every time. When the candidate set changes (an upstream goes
// down, was tried already) the rotation continues over the new set. The
// small state is guarded by a mutex; the zero value is ready to use.
type RoundRobinPicker struct {
	mu   sync.Mutex
	turn uint64
	last map[*Upstream]uint64 // the turn each upstream was last picked at
}

// Pick returns the candidate whose turn it is.
func (p *RoundRobinPicker) Pick(cands []*Upstream) *Upstream {
	return p.pick(cands, true)
}

// PickRetry returns the candidate whose turn it is without taking the
// turn: a retry's pick (its first choice failed) is no turn of the
// rotation. Counted as one, it made the failed upstream the least recently
// picked again, so that with a backend answering 429 (which ejects
// nothing) every request went to it first.
func (p *RoundRobinPicker) PickRetry(cands []*Upstream) *Upstream {
	return p.pick(cands, false)
}

func (p *RoundRobinPicker) pick(cands []*Upstream, turn bool) *Upstream {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		p.last = make(map[*Upstream]uint64)
	}
	best := cands[0]
	bestTurn := p.last[best]
	for _, u := range cands[1:] {
		if t := p.last[u]; t < bestTurn {
			best, bestTurn = u, t
		}
	}
	if turn {
		p.turn++
		p.last[best] = p.turn
	}
	return best
}
