package balancer

import "time"

// LatencyPicker is the power of two choices over time to first token: it
// draws two candidates at random and keeps the one with the lower cost,
// EWMA(TTFT) × (in flight + 1). Always taking the global minimum would send
// every request to one upstream until its EWMA moved; two random choices
// spread the load, and because the draws are independent (the same
// candidate may come up twice) even the slowest of n upstreams keeps about
// 1/n² of the traffic, so its EWMA stays current and a recovery is seen.
// An upstream without samples gets a neutral prior: the mean EWMA of the
// candidates that have one.
type LatencyPicker struct {
	Rand Rand
}

// Pick returns the cheaper of two randomly drawn candidates.
func (p *LatencyPicker) Pick(cands []*Upstream) *Upstream {
	if len(cands) == 1 {
		return cands[0]
	}
	a := cands[p.Rand.Intn(len(cands))]
	b := cands[p.Rand.Intn(len(cands))]
	if a == b {
		return a
	}
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
