package balancer

import (
	"math"
	"sync/atomic"
	"time"
)

// ErrReadTimeout is the read timeout's error: a read of a response body
// waited the backend's read timeout for a byte. It is a timeout, as the
// head timeouts' error is, so routing.retry's timeout class covers it.
var ErrReadTimeout error = timeoutError("timeout reading the response: the backend sent nothing for its read timeout")

// readWatch bounds how long one read of a response body may wait for the
// backend (the read timeout, as nginx's proxy_read_timeout): a backend
// that sent its head and then nothing more (a wedged GPU, a deadlocked
// engine, a network that drops packets without a reset) would otherwise
// hold the request for as long as its client waits.
//
// Only the time spent inside a read counts: a relay blocked writing to a
// slow client is server.send_timeout's concern, not the backend's. A read
// costs one clock reading and two atomic stores (begin and end); the
// timer is never touched from the read path. It fires at most once per
// timeout and, finding a read that has waited less, sets itself again for
// the rest, so that a read is cut timeout after it began.
//
// A readWatch serves one body and must not be copied; begin and end are
// called from the body's reader, stop from whichever goroutine ends the
// body.
type readWatch struct {
	timeout time.Duration
	base    time.Time    // origin of since, with its monotonic reading
	since   atomic.Int64 // when the read in progress began: ns after base, plus 1; 0: none
	stopped atomic.Bool
	timer   *time.Timer
	body    expirer // its expire is called at most once
}

// expirer is a body the read timeout can cut: expire ends the read in
// progress.
type expirer interface{ expire() }

// start arms w, the watch of body, whose expire is called when a read has
// waited timeout.
func (w *readWatch) start(timeout time.Duration, body expirer) {
	w.timeout, w.body, w.base = timeout, body, time.Now()
	// Made stopped and then set, so that the timer's function, which
	// reads w.timer, runs after the assignment (Reset orders it).
	w.timer = time.AfterFunc(math.MaxInt64, w.check)
	w.timer.Reset(timeout)
}

// begin marks the start of a read.
func (w *readWatch) begin() {
	if w.timer != nil {
		w.since.Store(int64(time.Since(w.base)) + 1)
	}
}

// end marks the end of a read.
func (w *readWatch) end() {
	if w.timer != nil {
		w.since.Store(0)
	}
}

// stop disarms w; a check already running may still set the timer once
// more, and then does nothing when it fires.
func (w *readWatch) stop() {
	if w.timer != nil && !w.stopped.Swap(true) {
		w.timer.Stop()
	}
}

// check is the timer's function.
func (w *readWatch) check() {
	if w.stopped.Load() {
		return
	}
	wait := w.timeout
	if s := w.since.Load(); s != 0 {
		waited := time.Since(w.base) - time.Duration(s-1)
		if waited >= w.timeout {
			if w.stopped.CompareAndSwap(false, true) {
				w.body.expire()
			}
			return
		}
		wait -= waited
	}
	w.timer.Reset(wait)
}
