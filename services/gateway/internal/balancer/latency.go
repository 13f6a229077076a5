package balancer

import "time"

// LatencyPicker is the power of two choices over time to first token: it
// draws two different candidates at random and keeps the one with the
// lower cost, EWMA(TTFT) × (in flight + 1). Always taking the global
// minimum would send every request to one upstream until its EWMA moved;
// two random choices spread the load. The slowest of the candidates wins
// no comparison while it stays the slowest, so one request in exploreOdds
// goes to a candidate drawn at random instead: its EWMA stays current and
// a recovery is seen, at a cost of 1/exploreOdds of the traffic spread
// over all of them. An upstream without samples gets a neutral prior: the
// mean EWMA of the candidates that have one.
type LatencyPicker struct {
	Rand Rand
}

// exploreOdds is one in how many picks goes to a random candidate.
const exploreOdds = 50

// Pick returns the cheaper of two different randomly drawn candidates, or
// now and then one drawn at random (see LatencyPicker).
func (p *LatencyPicker) Pick(cands []*Upstream) *Upstream {
	n := len(cands)
	if n == 1 {
		return cands[0]
	}
	if p.Rand.Intn(exploreOdds) == 0 {
		return cands[p.Rand.Intn(n)]
	}
	i, j := p.Rand.Intn(n), p.Rand.Intn(n-1)
	if j >= i {
		j++
	}
	a, b := cands[i], cands[j]
	prior := neutralTTFT(cands)
	if latencyCost(b, prior) < latencyCost(a, prior) {
		return b
	}
	return a
}

func latencyCost(u *Upstream, prior float64) float64 {
	t := prior
	if d, ok := u.TTFT(); ok {
		t = float64(d)
	}
	return t * float64(u.InFlight()+1)
}

// neutralTTFT is the mean EWMA over the candidates with samples, or 1ms
// when none has one (then only in-flight counts).
func neutralTTFT(cands []*Upstream) float64 {
	var sum float64
	n := 0
	for _, u := range cands {
		if d, ok := u.TTFT(); ok {
			sum += float64(d)
			n++
		}
	}
	if n == 0 {
		return float64(time.Millisecond)
	}
	return sum / float64(n)
}
