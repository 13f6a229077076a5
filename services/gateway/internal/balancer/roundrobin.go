package balancer

import "sync/atomic"

// RoundRobinPicker takes the candidates in turn. When the candidate set
// changes (an upstream goes down, was tried already) the rotation simply
// continues over the new set. The zero value is ready to use.
type RoundRobinPicker struct {
	next atomic.Uint64
}

// Pick returns the next candidate in turn.
func (p *RoundRobinPicker) Pick(cands []*Upstream) *Upstream {
	n := p.next.Add(1) - 1
	return cands[n%uint64(len(cands))]
}
