package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// sendPace bounds how long a reply may stop going out to its client
// (server.send_timeout). Before each write the relay calls arm, which
// moves the connection's write deadline to timeout from now; a client that
// stops reading, its connection left open, then fails the write once the
// socket's buffers are full and nothing more could be sent for about
// timeout, and the relay ends the request as if the client had left: the
// backend's request is cancelled, the lease freed, what was delivered is
// billed. Without it such a client would hold all three for as long as its
// connection stayed open.
//
// A write can wait longer than timeout for a client that reads all along,
// slowly: the kernel wakes a writer blocked on a full send buffer only once
// half of it has gone, and autotuning grows that buffer to megabytes. With
// the client's connection known (Gateway.ConnContext), a watch looks at it
// every timeout/8 while no write has moved the deadline: each time the
// connection has had bytes acknowledged since the watch's last look, the
// client is still reading, and the deadline moves to timeout from then.
// The client's kernel acknowledges in steps of about its receive buffer,
// so a reader is seen reading if it takes a step within about 7/8 of
// timeout. A client that stopped is cut as before, timeout after its last
// acknowledged byte at most timeout/8 later.
//
// arm moves the deadline at most every timeout/8 (a clock read per call,
// no syscall), so a write starts with at least 7/8 of timeout left. done
// takes the deadline off again: the connection goes on to the reply's end
// and its next request. A sendPace serves one reply and is not safe for
// concurrent use.
type sendPace struct {
	rc      *http.ResponseController
	timeout time.Duration
	armed   time.Time // when the deadline was last moved; zero: never
	off     bool      // the writer takes no deadline
	conn    net.Conn  // the client's connection; nil: not known
	watch   *paceWatch
}

func newSendPace(rc *http.ResponseController, timeout time.Duration, conn net.Conn) sendPace {
	return sendPace{rc: rc, timeout: timeout, off: timeout <= 0, conn: conn}
}

func (p *sendPace) arm() {
	if p.off {
		return
	}
	now := time.Now()
	if !p.armed.IsZero() && now.Sub(p.armed) < p.timeout/8 {
		return
	}
	if p.watch != nil {
		p.watch.mu.Lock()
		defer p.watch.mu.Unlock()
	}
	if p.rc.SetWriteDeadline(now.Add(p.timeout)) != nil {
		p.off = true
		return
	}
	p.armed = now
	switch {
	case p.watch != nil:
		p.watch.timer.Reset(p.timeout / 8)
	case p.conn != nil:
		// A timer, and no more, for a reply that is sent in time.
		w := &paceWatch{rc: p.rc, conn: p.conn, timeout: p.timeout}
		w.mu.Lock() // look reads timer
		w.timer = time.AfterFunc(p.timeout/8, w.look)
		w.mu.Unlock()
		p.watch = w
	}
}

// ackedBytes is bytesAcked (tests replace it).
var ackedBytes = bytesAcked

// paceWatch moves a reply's write deadline on while its client's
// connection takes bytes (see sendPace).
type paceWatch struct {
	rc      *http.ResponseController
	conn    net.Conn
	timeout time.Duration

	mu      sync.Mutex // held by look, and by arm and done when they use rc
	timer   *time.Timer
	acked   uint64    // the bytes acknowledged at the last look (the first: a baseline)
	have    bool      // acked is set
	until   time.Time // the deadline look last set; zero: none
	stopped bool      // done: rc is not to be used again
}

// look runs timeout/8 after the deadline's last move by the relay and then
// every timeout/8, as long as the relay does not move it.
func (w *paceWatch) look() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	acked, ok := ackedBytes(w.conn)
	if !ok {
		return // the deadline stands
	}
	if w.have && acked > w.acked {
		// The client took bytes since the last look: it reads.
		until := time.Now().Add(w.timeout)
		if w.rc.SetWriteDeadline(until) != nil {
			return
		}
		w.until = until
	}
	w.acked, w.have = acked, true
	w.timer.Reset(w.timeout / 8)
}

// timedOut reports whether err, a write's, is the deadline's doing (an
// HTTP/2 stream reset by its deadline fails the write with an error of its
// own, hence the clock).
func (p *sendPace) timedOut(err error) bool {
	if p.armed.IsZero() || err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	deadline := p.armed.Add(p.timeout)
	if p.watch != nil {
		p.watch.mu.Lock()
		if p.watch.until.After(deadline) {
			deadline = p.watch.until // moved on for a client that read
		}
		p.watch.mu.Unlock()
	}
	return !time.Now().Before(deadline)
}

func (p *sendPace) done() {
	if p.watch != nil {
		p.watch.mu.Lock()
		p.watch.stopped = true
		p.watch.timer.Stop()
		p.watch.mu.Unlock()
		p.watch = nil
	}
	if !p.armed.IsZero() {
		_ = p.rc.SetWriteDeadline(time.Time{})
		p.armed = time.Time{}
	}
}

// clientWriteError is the event's error for a failed write to the client.
func (p *sendPace) clientWriteError(err error) string {
	if p.timedOut(err) {
		return "client_send_timeout"
	}
	return "client_closed_request"
}
