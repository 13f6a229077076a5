package gateway

import (
	"context"
	"errors"
	"net/http"
	"os"
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
}

func newSendPace(rc *http.ResponseController, timeout time.Duration) sendPace {
	return sendPace{rc: rc, timeout: timeout, off: timeout <= 0}
}

func (p *sendPace) arm() {
	if p.off {
		return
	}
	now := time.Now()
	if !p.armed.IsZero() && now.Sub(p.armed) < p.timeout/8 {
		return
	}
	if p.rc.SetWriteDeadline(now.Add(p.timeout)) != nil {
		p.off = true
		return
	}
	p.armed = now
}

// timedOut reports whether err, a write's, is the deadline's doing (an
// HTTP/2 stream reset by its deadline fails the write with an error of its
// own, hence the clock).
func (p *sendPace) timedOut(err error) bool {
	if p.armed.IsZero() || err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	return errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(p.armed.Add(p.timeout))
}

func (p *sendPace) done() {
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
