package balancer

// LeastConnPicker picks the candidate with the fewest requests in flight;
// ties are broken at random so that idle upstreams share the work instead
// of the first one taking it all.
type LeastConnPicker struct {
	Rand Rand
}

// Pick returns a candidate with the fewest requests in flight.
func (p *LeastConnPicker) Pick(cands []*Upstream) *Upstream {
	return leastInFlight(cands, p.Rand)
}

// leastInFlight picks uniformly among the candidates with the fewest in
// flight by reservoir sampling, in one pass and without allocating.
func leastInFlight(cands []*Upstream, rnd Rand) *Upstream {
	var best *Upstream
	var bestN int64
	ties := 0
	for _, u := range cands {
		n := u.InFlight()
		switch {
		case best == nil || n < bestN:
			best, bestN, ties = u, n, 1
		case n == bestN:
			ties++
			if rnd.Intn(ties) == 0 {
				best = u
			}
		}
	}
	return best
}
