package publish

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readLimit is about the most bytes the sender reads from the outbox at once.
const readLimit = 1 << 20

// errAckTimeout reports a publish whose ack did not come within AckTimeout.
var errAckTimeout = errors.New("timed out waiting for the JetStream ack")

// inflight is one published event awaiting its ack.
type inflight struct {
	fut      jetstream.PubAckFuture
	end      position
	deadline time.Time
}

// sendLoop publishes the outbox in order. Acks are taken in publish order:
// the outbox's acknowledged mark only moves past an event once it and every
// event before it are acked. The first failure sends the loop back to the
// mark; events after it that did arrive are sent again and dropped by the
// stream as duplicates.
func (p *Publisher) sendLoop() {
	defer close(p.senderDone)
	var (
		bo       = backoff{initial: p.opts.RetryInitial, max: p.opts.RetryMax}
		cursor   = p.ob.ackedPos()
		q        []inflight
		window   = p.opts.MaxInFlight
		attempt  int
		drainCh  = p.drain
		draining bool
		lastWarn time.Time
		timer    = time.NewTimer(time.Hour)
	)
	defer timer.Stop()

	// fail handles a failed publish and reports whether the loop must stop.
	fail := func(err error) bool {
		p.m.failures.Inc()
		now := time.Now()
		if now.Sub(lastWarn) >= p.opts.WarnInterval {
			lastWarn = now
			p.log.Warn("event publish failed; events stay in the outbox and are retried in order",
				"err", err, "outbox_events", p.ob.depth())
		}
		clear(q)
		q = q[:0]
		cursor = p.ob.ackedPos()
		window = 1
		if draining {
			return true
		}
		timer.Reset(bo.delay(attempt, rand.Float64()))
		attempt++
		select {
		case <-timer.C:
			return false
		case <-drainCh:
			// Closing while NATS is failing: the outbox keeps the rest.
			return true
		case <-p.abort:
			return true
		}
	}

	for {
		// Fill the window from the outbox.
		var pubErr error
		for len(q) < window && pubErr == nil {
			recs, err := p.ob.read(cursor, window-len(q), readLimit)
			for _, r := range recs {
				msg := &nats.Msg{Subject: r.subject, Data: r.data, Header: nats.Header{}}
				if r.msgID != "" {
					msg.Header[jetstream.MsgIDHeader] = []string{r.msgID}
				}
				fut, perr := p.js.PublishMsgAsync(msg)
				if perr != nil {
					pubErr = perr
					break
				}
				q = append(q, inflight{fut: fut, end: r.end, deadline: time.Now().Add(p.opts.AckTimeout)})
				cursor = r.end
			}
			if err != nil && pubErr == nil {
				// A record that does not verify cannot be published;
				// skip the rest of its segment rather than stall.
				p.log.Error("event outbox: unreadable record; skipping the rest of its segment", "err", err)
				p.m.dropped.Inc()
				cursor = p.ob.nextSegment(cursor)
				continue
			}
			if len(recs) == 0 {
				break
			}
		}
		if pubErr != nil {
			if fail(pubErr) {
				return
			}
			continue
		}
		if len(q) == 0 {
			if draining {
				return
			}
			select {
			case <-p.wake:
				if p.opts.Linger > 0 && !p.linger(timer, drainCh) {
					return
				}
			case <-drainCh:
				draining, drainCh = true, nil
			case <-p.abort:
				return
			}
			continue
		}

		// Wait for the oldest ack, or for more to send.
		timer.Reset(time.Until(q[0].deadline))
		select {
		case <-q[0].fut.Ok():
			n := 1
			for n < len(q) && resolvedOK(q[n].fut) {
				n++
			}
			p.ob.ack(q[n-1].end)
			p.m.published.Add(float64(n))
			clear(q[:n])
			q = q[n:]
			attempt = 0
			window = min(window*2, p.opts.MaxInFlight)
		case err := <-q[0].fut.Err():
			if fail(err) {
				return
			}
		case <-timer.C:
			if fail(errAckTimeout) {
				return
			}
		case <-p.wake:
		case <-drainCh:
			draining, drainCh = true, nil
		case <-p.abort:
			return
		}
	}
}

// linger waits Options.Linger for more events to reach the outbox after
// the sender was woken from idle, so that they go out together. It returns
// early when the outbox already holds a full window or a drain begins, and
// reports false when the publisher is aborted.
func (p *Publisher) linger(timer *time.Timer, drainCh <-chan struct{}) bool {
	if p.ob.depth() >= int64(p.opts.MaxInFlight) {
		return true
	}
	timer.Reset(p.opts.Linger)
	select {
	case <-timer.C:
	case <-drainCh:
		// drain is closed, so the loop's next wait sees it again.
		timer.Stop()
	case <-p.abort:
		return false
	}
	return true
}

// resolvedOK reports, without blocking, whether f has been acked.
func resolvedOK(f jetstream.PubAckFuture) bool {
	select {
	case <-f.Ok():
		return true
	default:
		return false
	}
}
