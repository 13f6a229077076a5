package publish

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
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

// skipped is the future of a record dropped rather than published: it is
// resolved already, so the outbox's mark moves past the record in order.
var skipped jetstream.PubAckFuture = skippedFuture(closedAck())

type skippedFuture <-chan *jetstream.PubAck

func (f skippedFuture) Ok() <-chan *jetstream.PubAck { return f }
func (skippedFuture) Err() <-chan error              { return nil }
func (skippedFuture) Msg() *nats.Msg                 { return nil }

func closedAck() <-chan *jetstream.PubAck {
	c := make(chan *jetstream.PubAck)
	close(c)
	return c
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
		err = p.explain(err)
		p.m.failures.Inc()
		now := time.Now()
		p.stalledSince.CompareAndSwap(0, now.UnixNano())
		msg := err.Error()
		p.stallErr.Store(&msg)
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
			var maxPayload int64
			if len(recs) > 0 {
				maxPayload = p.maxPayload()
			}
			for _, r := range recs {
				fut, perr := p.send(r, maxPayload)
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
			n, published := 0, 0
			for n < len(q) && (n == 0 || resolvedOK(q[n].fut)) {
				if q[n].fut != skipped {
					published++
				}
				n++
			}
			p.ob.ack(q[n-1].end)
			if p.stalledSince.Load() != 0 {
				p.stalledSince.Store(0)
			}
			p.m.published.Add(float64(published))
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

// send publishes r, fitted to a server that takes maxPayload bytes per
// message (0: not known). An event larger than that is published with its
// largest content cut (see fitEvent) rather than failing for ever and
// holding back every event after it. An event that cannot be made to fit
// is dropped, counted and logged; its future is skipped.
func (p *Publisher) send(r record, maxPayload int64) (jetstream.PubAckFuture, error) {
	for try := 0; ; try++ {
		data := r.data
		if limit := maxEventBytes(maxPayload, r.msgID); limit > 0 && int64(len(data)) > limit {
			fitted, err := fitEvent(data, int(limit))
			if err != nil {
				p.dropped(1, fmt.Sprintf("larger than the NATS server's max_payload (%d bytes): %v", maxPayload, err), r.msgID)
				return skipped, nil
			}
			p.truncated(r.msgID, len(data), len(fitted), "max_payload", maxPayload)
			data = fitted
		}
		// The stream named, so that one that is not LLMPROXY capturing
		// the subject (an operator's "llmproxy.>") refuses the event
		// rather than acknowledge it where no meter reads it.
		msg := &nats.Msg{Subject: r.subject, Data: data, Header: nats.Header{jetstream.ExpectedStreamHeader: expectStream}}
		if r.msgID != "" {
			msg.Header[jetstream.MsgIDHeader] = []string{r.msgID}
		}
		fut, err := p.js.PublishMsgAsync(msg)
		if !errors.Is(err, nats.ErrMaxPayload) {
			return fut, err
		}
		// Retrying cannot help: the connection takes less than maxPayload
		// said (it reached another server meanwhile). Fit r to what it
		// takes now, once.
		if now := p.maxPayload(); try == 0 && now > 0 && (maxPayload <= 0 || now < maxPayload) {
			maxPayload = now
			continue
		}
		p.dropped(1, fmt.Sprintf("larger than the NATS server's max_payload (%d bytes): %v", maxPayload, err), r.msgID)
		return skipped, nil
	}
}

// expectStream is the value of every event's Nats-Expected-Stream header.
var expectStream = []string{events.StreamName}

// maxPayload returns the most bytes the connected server takes per
// message, or 0 before the connection has reached a server.
func (p *Publisher) maxPayload() int64 {
	if nc := p.js.Conn(); nc != nil {
		return nc.MaxPayload()
	}
	return 0
}

// truncated counts an event published with its content cut and logs it,
// at most once per WarnInterval; bound names the limit it had to fit.
func (p *Publisher) truncated(requestID string, size, fitted int, bound string, limit int64) {
	p.m.truncated.Inc()
	if !p.logDue(&p.lastTruncLog) {
		return
	}
	p.log.Warn("event too large: published with its request body or response cut (marked truncated)",
		"request_id", requestID, "bytes", size, "published_bytes", fitted, bound, limit)
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

// errNotConnected stands for the error nats.go gives a publish with
// headers before its connection has ever reached a server: that the server
// does not support headers, which would send an operator to upgrade a NATS
// server that is merely down.
var errNotConnected = errors.New("nats is not connected")

// explain returns err, or errNotConnected when err only says that a
// connection that has not connected yet does not know the server supports
// headers.
func (p *Publisher) explain(err error) error {
	if errors.Is(err, nats.ErrHeadersNotSupported) {
		if nc := p.js.Conn(); nc != nil && !nc.IsConnected() {
			return errNotConnected
		}
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		return fmt.Errorf("%w: no stream takes the events (the stream %s does not exist: deleted, or not made yet)", err, events.StreamName)
	}
	var api *jetstream.APIError
	if errors.As(err, &api) && api.ErrorCode == errCodeStreamNotMatch {
		return fmt.Errorf("%w: another stream than %s captures the events' subjects (the log's WARN about the event streams names it)", err, events.StreamName)
	}
	return err
}

// errCodeStreamNotMatch is JetStream's refusal of a message whose
// Nats-Expected-Stream is not the stream that captures its subject.
const errCodeStreamNotMatch jetstream.ErrorCode = 10060
