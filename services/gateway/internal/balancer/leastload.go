package balancer

import "time"

// LeastLoadPicker picks the engine with the shortest queue as scraped from
// its /metrics: fewest waiting requests, then the lowest GPU KV-cache use,
// then the fewest in flight, ties at random. Requests this gateway sent
// since the scrape are counted as waiting, so the upstream that looked
// idle at the last scrape does not take every request until the next.
// When any candidate has no scrape younger than MaxAge (the engine exposes
// no metrics, or scraping fails) the picker falls back to least
// connections over all candidates, since mixing the two measures would
// compare unlike numbers.
type LeastLoadPicker struct {
	Rand   Rand
	Clock  Clock
	MaxAge time.Duration
}

// Pick returns the least loaded candidate.
func (p *LeastLoadPicker) Pick(cands []*Upstream) *Upstream {
	now := p.Clock.Now()
	var best *Upstream
	var bestWait, bestCache float64
	var bestN int64
	ties := 0
	for _, u := range cands {
		l := u.LastLoad()
		if l == nil || now.Sub(l.At) > p.MaxAge {
			return leastInFlight(cands, p.Rand)
		}
		n := u.InFlight()
		wait := l.Waiting + float64(max(n-l.InFlightAtScrape, 0))
		cache := l.GPUCache
		switch {
		case best == nil || less(wait, cache, n, bestWait, bestCache, bestN):
			best, bestWait, bestCache, bestN, ties = u, wait, cache, n, 1
		case wait == bestWait && cache == bestCache && n == bestN:
			ties++
			if p.Rand.Intn(ties) == 0 {
				best = u
			}
		}
	}
	return best
}

func less(wait, cache float64, n int64, bw, bc float64, bn int64) bool {
	if wait != bw {
		return wait < bw
	}
	if cache != bc {
		return cache < bc
	}
	return n < bn
}
