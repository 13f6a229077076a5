package notifier

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// unauthenticatedSubject is the subject of the events of requests refused
// without a valid key.
var unauthenticatedSubject = events.Subject(events.UnauthenticatedKeyID)

// message is the part of jetstream.Msg the handler uses.
type message interface {
	Subject() string
	Data() []byte
	Headers() nats.Header
	Metadata() (*jetstream.MsgMetadata, error)
	Ack() error
	// DoubleAck acks and waits for the server to confirm it.
	DoubleAck(ctx context.Context) error
	NakWithDelay(delay time.Duration) error
}

// dlqPublishTimeout bounds the publish of one dead letter.
const dlqPublishTimeout = 10 * time.Second

// handler decides the fate of one event for one endpoint. It is safe for
// concurrent use.
type handler struct {
	ep      Endpoint
	client  *http.Client
	opts    Options
	metrics *metrics
	log     *slog.Logger
	// deadLetter stores a dead letter durably (LLMPROXY_DLQ in production).
	deadLetter func(context.Context, DeadLetter) error
	// attempts records failed attempts (AttemptsBucket in production); nil
	// records none.
	attempts attemptLog
}

// handle delivers msg once and then acks it, schedules another attempt
// (NakWithDelay) or dead-letters it. ctx should not be cancelled by shutdown:
// an attempt that has started is finished.
func (h *handler) handle(ctx context.Context, msg message) {
	body := msg.Data()
	meta, err := msg.Metadata()
	if err != nil {
		// Not a JetStream message; nothing can be acked either.
		h.log.Error("webhook: message without metadata", "endpoint", h.ep.Name, "err", err)
		return
	}
	id := eventID(msg.Headers(), body, meta)
	if !h.ep.Unauthenticated && msg.Subject() == unauthenticatedSubject {
		if err := msg.Ack(); err != nil {
			h.log.Warn("webhook: ack failed; the event may be skipped again", "endpoint", h.ep.Name, "event_id", id, "err", err)
		}
		h.metrics.skipped.WithLabelValues(h.ep.Name).Inc()
		return
	}
	now := h.opts.Clock.Now()
	// NumDelivered also counts deliveries that were no attempt (see
	// AttemptsBucket): the attempts made are those written down. A first
	// delivery has none.
	key := attemptKey(h.ep.Name, meta.Sequence.Stream)
	var prev attemptRecord
	// recorded: the event may have a record, to be removed once it is
	// settled.
	var recorded bool
	if meta.NumDelivered > 1 && h.attempts != nil {
		gctx, cancel := context.WithTimeout(ctx, attemptsTimeout)
		r, ok, err := h.attempts.get(gctx, key)
		cancel()
		if err != nil {
			// Without the count the event gets more attempts than
			// MaxAttempts, never fewer; MaxAge still bounds them.
			h.log.Warn("webhook: attempt count not read; counting from here", "endpoint", h.ep.Name, "event_id", id, "err", err)
		}
		prev, recorded = r, ok || err != nil
	}
	if p := prev.Pending; p != nil {
		// The event was given up on, but its dead letter was not
		// stored: store it now. The receiver has had its attempts and
		// is not sent the event again.
		log := h.log.With("endpoint", h.ep.Name, "event_id", id, "attempt", p.Attempts)
		d := DeadLetter{EventID: id, Reason: p.Reason, Attempts: p.Attempts, LastStatus: p.LastStatus, LastError: p.LastError, FailedAt: p.FailedAt}
		h.toDLQ(ctx, msg, log, key, d, body, int(meta.NumDelivered))
		return
	}
	// n is this attempt's number among all made; only those failed without
	// a Retry-After count towards max_attempts (see below).
	n := prev.Attempts + prev.Deferred + 1
	log := h.log.With("endpoint", h.ep.Name, "event_id", id, "attempt", n)

	a := post(ctx, h.client, h.ep, id, body, now)
	h.metrics.seconds.WithLabelValues(h.ep.Name).Observe(a.Duration.Seconds())

	d := DeadLetter{EventID: id, Attempts: n, LastStatus: a.Status}
	if a.Err != nil {
		d.LastError = a.Err.Error()
	}
	switch classify(a.Status) {
	case classSuccess:
		if err := msg.Ack(); err != nil {
			log.Warn("webhook: ack failed; the event may be delivered again", "err", err)
		}
		if recorded {
			h.forget(ctx, log, key)
		}
		h.metrics.success.Inc()
		h.metrics.deliveries.WithLabelValues(h.ep.Name, outcomeSuccess).Inc()
		return
	case classPermanent:
		d.Reason = ReasonPermanent
	case classRetry:
		// A receiver that says when to come back (Retry-After: 1 during
		// a deploy, say) is asked again then without using up an attempt:
		// otherwise max_attempts of such answers would dead-letter an
		// event within seconds of an outage that backoff rides out for
		// minutes. max_age bounds those retries.
		rec := attemptRecord{Attempts: prev.Attempts + 1, Deferred: prev.Deferred, LastStatus: d.LastStatus, LastError: d.LastError}
		if a.HasRetryAfter {
			rec.Attempts, rec.Deferred = prev.Attempts, prev.Deferred+1
		}
		switch {
		case rec.Attempts >= h.ep.MaxAttempts:
			d.Reason = ReasonMaxAttempts
		case now.Sub(meta.Timestamp) >= h.ep.MaxAge:
			d.Reason = ReasonMaxAge
		default:
			h.record(ctx, log, key, rec)
			delay := retryDelay(h.backoff(n), a.RetryAfter, a.HasRetryAfter, h.opts.BackoffBase)
			log.Debug("webhook: attempt failed, retrying", "status", a.Status, "err", a.Err, "delay", delay)
			if err := msg.NakWithDelay(delay); err != nil {
				log.Warn("webhook: nak failed; the event is retried after the ack wait", "err", err)
			}
			h.metrics.retries.WithLabelValues(h.ep.Name).Inc()
			h.metrics.deliveries.WithLabelValues(h.ep.Name, outcomeRetry).Inc()
			return
		}
	}
	h.toDLQ(ctx, msg, log, key, d, body, n)
}

// backoff is the wait after attempt n failed, capped by the endpoint's
// BackoffMax when it has one.
func (h *handler) backoff(n int) time.Duration {
	ceiling := h.opts.BackoffMax
	if h.ep.BackoffMax > 0 {
		ceiling = max(h.ep.BackoffMax, h.opts.BackoffBase)
	}
	return Backoff(n, h.opts.BackoffBase, ceiling, h.opts.Rand)
}

// record writes down a failed attempt before the event is scheduled again.
// When it cannot, the event is retried all the same: it then gets more
// attempts than MaxAttempts, never fewer, and MaxAge bounds them.
func (h *handler) record(ctx context.Context, log *slog.Logger, key string, r attemptRecord) {
	if h.attempts == nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, attemptsTimeout)
	err := h.attempts.put(pctx, key, r)
	cancel()
	if err != nil {
		log.Warn("webhook: failed attempt not recorded; it will not count towards max_attempts", "err", err)
	}
}

// forget removes the attempt record of an event that is settled (delivered
// or dead-lettered). A record left behind only takes room until the bucket's
// TTL drops it.
func (h *handler) forget(ctx context.Context, log *slog.Logger, key string) {
	rctx, cancel := context.WithTimeout(ctx, attemptsTimeout)
	err := h.attempts.remove(rctx, key)
	cancel()
	if err != nil {
		log.Debug("webhook: attempt record of a settled event not removed; it expires", "err", err)
	}
}

// toDLQ stores the dead letter and only then acks the event; when the store
// fails the event is nak'd so that nothing is lost. The dead letter is
// written down under key (the event's attempt record) before it is stored,
// and the record is removed only once the server has confirmed the ack: a
// delivery of the event after a failed store, or after a notifier killed
// before its ack reached the server, finds it and only stores the dead
// letter (a duplicate the DLQ stream drops), without POSTing the event
// again. It reports whether the dead letter was stored; retry numbers the
// store's try, for its backoff.
func (h *handler) toDLQ(ctx context.Context, msg message, log *slog.Logger, key string, d DeadLetter, body []byte, retry int) bool {
	d.Endpoint = h.ep.Name
	d.URL = displayURL(h.ep.URL)
	if d.FailedAt.IsZero() {
		d.FailedAt = h.opts.Clock.Now().UTC()
	}
	d.Event = rawEvent(body)

	if h.attempts != nil {
		rec := attemptRecord{Attempts: d.Attempts, LastStatus: d.LastStatus, LastError: d.LastError,
			Pending: &pendingDeadLetter{Reason: d.Reason, Attempts: d.Attempts, LastStatus: d.LastStatus, LastError: d.LastError, FailedAt: d.FailedAt}}
		rctx, cancel := context.WithTimeout(ctx, attemptsTimeout)
		err := h.attempts.put(rctx, key, rec)
		cancel()
		if err != nil {
			log.Warn("webhook: pending dead letter not recorded; the event may be POSTed again", "err", err)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, dlqPublishTimeout)
	err := h.deadLetter(pctx, d)
	cancel()
	if err != nil {
		log.Error("webhook: dead letter not stored; storing it again later", "reason", d.Reason, "err", err)
		h.metrics.deliveries.WithLabelValues(h.ep.Name, outcomeDLQError).Inc()
		if err := msg.NakWithDelay(h.backoff(retry)); err != nil {
			log.Warn("webhook: nak failed; the event is retried after the ack wait", "err", err)
		}
		return false
	}
	actx, cancel := context.WithTimeout(ctx, attemptsTimeout)
	err = msg.DoubleAck(actx)
	cancel()
	if err != nil {
		// The record stays: a redelivery stores the dead letter again
		// (dropped as a duplicate) and acks, without a POST.
		log.Warn("webhook: ack after dead letter not confirmed; the dead letter may repeat", "err", err)
	} else if h.attempts != nil {
		h.forget(ctx, log, key)
	}
	log.Warn("webhook: event dead-lettered", "reason", d.Reason, "last_status", d.LastStatus, "last_error", d.LastError)
	h.metrics.failure.Inc()
	h.metrics.dlq.WithLabelValues(h.ep.Name).Inc()
	h.metrics.deliveries.WithLabelValues(h.ep.Name, outcomeDeadLetter).Inc()
	return true
}

// eventID is the event's request id: the Nats-Msg-Id the gateway sets, else
// the body's request_id, else the event's place in its stream.
func eventID(h nats.Header, body []byte, meta *jetstream.MsgMetadata) string {
	if id := h.Get(jetstream.MsgIDHeader); id != "" {
		return id
	}
	if id := eventIDFromBody(body); id != "" {
		return id
	}
	return fmt.Sprintf("%s-%s", meta.Stream, strconv.FormatUint(meta.Sequence.Stream, 10))
}
