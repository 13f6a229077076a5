package ledger

import "time"

// gcra is one decision of the generic cell rate algorithm (as go-redis
// redis_rate decides it): a request is allowed when the theoretical arrival
// time tat, advanced by one emission interval, is at most burst intervals
// ahead of now. It returns the new tat to store when allowed, the requests
// left in the burst, the wait before a retry can succeed and the time until
// the burst is full again.
func gcra(tat, now time.Time, interval time.Duration, burst int64) (ok bool, newTAT time.Time, remaining int64, retry, reset time.Duration) {
	if tat.Before(now) {
		tat = now
	}
	newTAT = tat.Add(interval)
	allowAt := newTAT.Add(-time.Duration(burst) * interval)
	diff := now.Sub(allowAt)
	if diff < 0 {
		return false, tat, 0, -diff, tat.Sub(now)
	}
	return true, newTAT, int64(diff / interval), 0, newTAT.Sub(now)
}

// maxInterval bounds the emission interval, and maxSpan a burst of them
// (burst × interval): a rate so low that its interval would not fit a
// time.Duration (1e-10 per second) is one request per maxInterval, about a
// century, where the overflowing conversion made it an interval of 1 ns,
// no limit at all; and the burst is cut to what fits maxSpan.
const (
	maxInterval = 100 * 365 * 24 * time.Hour
	maxSpan     = 2 * maxInterval
)

// emission returns the emission interval of rps requests per second and
// the burst the cell rate algorithm takes with it, at most maxInterval and
// maxSpan.
func emission(rps float64, burst int64) (time.Duration, int64) {
	iv := maxInterval
	if ns := float64(time.Second) / rps; ns < float64(maxInterval) {
		iv = max(time.Duration(ns), 1)
	}
	return iv, min(burst, int64(maxSpan/iv))
}
