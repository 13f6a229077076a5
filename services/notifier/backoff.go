package notifier

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Rand is the source of jitter. Implementations must be safe for concurrent
// use; *rand.Rand from math/rand/v2 is not, so wrap it (or use the default,
// which draws from the runtime's global generator).
type Rand interface {
	// Int64N returns a number in [0, n); n > 0.
	Int64N(n int64) int64
}

// globalRand draws from math/rand/v2's global generator, which is safe for
// concurrent use.
type globalRand struct{}

func (globalRand) Int64N(n int64) int64 { return rand.Int64N(n) }

// maxRetryAfter bounds how long a receiver's Retry-After may hold an event
// back, so a misconfigured receiver cannot park events for days.
const maxRetryAfter = time.Hour

// Backoff returns the wait before the next attempt after attempt (1-based)
// failed: exponential with full jitter, a uniformly random duration in
// [0, min(max, base·2^(attempt-1))]. It is a pure function of its arguments.
func Backoff(attempt int, base, max time.Duration, rnd Rand) time.Duration {
	if base <= 0 || max <= 0 {
		return 0
	}
	if attempt < 1 {
		attempt = 1
	}
	ceiling := base
	for i := 1; i < attempt && ceiling < max; i++ {
		ceiling *= 2
	}
	if ceiling > max {
		ceiling = max
	}
	return time.Duration(rnd.Int64N(int64(ceiling) + 1))
}

// retryDelay is the wait before the next attempt. A receiver that sent
// Retry-After knows best when it will take the event again: its value is
// used as given (bounded by maxRetryAfter, and never below floor so that
// "Retry-After: 0" cannot make a tight loop), in place of the backoff, which
// may by then be minutes — a receiver back from an outage would otherwise
// wait for events it asked to get in a second. Without Retry-After the wait
// is the backoff.
func retryDelay(backoff, retryAfter time.Duration, hasRetryAfter bool, floor time.Duration) time.Duration {
	if !hasRetryAfter {
		return backoff
	}
	return max(min(retryAfter, maxRetryAfter), floor)
}

// parseRetryAfter reads a Retry-After header value, either delta-seconds or
// an HTTP date, relative to now. It reports false when v is empty or invalid.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}
