package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// failureLogInterval is the least time between two log lines of one kind
// about a dependency failing requests.
const failureLogInterval = 10 * time.Second

// failureLog rate-limits the log lines of a failure that repeats with every
// request while a dependency is down: with Redis unreachable every
// admission fails, and a line per request would flood the log at the
// request rate (each refusal is still counted in the metrics). Each kind of
// line, named by its message, is written at most once per
// failureLogInterval, with "suppressed": how many were left out since the
// one before. The zero value is ready to use; it is safe for concurrent use
// and must not be copied.
type failureLog struct {
	mu    sync.Mutex
	lines map[string]*failureLine
}

// failureLine is when a kind of line was last written and how many have
// been left out since.
type failureLine struct {
	at         time.Time
	suppressed int
}

// allow reports whether a line with message msg may be written at now and,
// if so, how many were left out before it.
func (f *failureLog) allow(msg string, now time.Time) (ok bool, suppressed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.lines[msg]
	if l == nil {
		if f.lines == nil {
			f.lines = map[string]*failureLine{}
		}
		f.lines[msg] = &failureLine{at: now}
		return true, 0
	}
	if now.Sub(l.at) < failureLogInterval {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.at, l.suppressed = now, 0
	return true, n
}

// logFailure logs a request's failure at a dependency (Redis, the key
// store) at level, at most once per failureLogInterval for each msg.
func (g *Gateway) logFailure(level slog.Level, msg string, args ...any) {
	now := time.Now
	if g.now != nil {
		now = g.now
	}
	ok, n := g.failures.allow(msg, now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	g.log.Log(context.Background(), level, msg, args...)
}
