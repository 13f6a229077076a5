package publish

import "time"

// backoff is the retry schedule of the sender: initial, doubling per
// consecutive failure, capped at max, with up to a fifth taken off at random
// so that many gateways do not retry in step.
type backoff struct {
	initial, max time.Duration
}

// delay returns the wait before retry number attempt (0-based); jitter is a
// value in [0, 1).
func (b backoff) delay(attempt int, jitter float64) time.Duration {
	d := b.initial
	for i := 0; i < attempt && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	return d - time.Duration(float64(d)*0.2*jitter)
}
