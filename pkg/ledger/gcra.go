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

// interval is the emission interval of rps requests per second.
func interval(rps float64) time.Duration {
	return max(time.Duration(float64(time.Second)/rps), 1)
}
