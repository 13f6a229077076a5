// Package notifier delivers every RequestCompleted event to each configured
// webhook endpoint: one durable JetStream consumer per endpoint, signed
// POSTs, retries with exponential backoff and jitter, and a dead-letter
// stream (LLMPROXY_DLQ) for what an endpoint will not take.
//
// Delivery is at least once: receivers dedupe on X-LLMProxy-Event-Id. Any
// number of notifier processes may run; those with the same endpoint share
// its consumer, so each event goes to one of them.
package notifier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Notifier delivers events to its endpoints. Create it with New and start it
// with Run; it must not be copied.
type Notifier struct {
	js        jetstream.JetStream
	endpoints []Endpoint
	opts      Options
	metrics   *metrics
}

// New checks the endpoints and options and returns a Notifier. It does no
// I/O; Run creates the consumers. Endpoint defaults (Timeout 5s,
// MaxAttempts 10, MaxAge 24h) are filled in; names must be unique once
// turned into durable names (see DurableName).
func New(js jetstream.JetStream, endpoints []Endpoint, opts Options) (*Notifier, error) {
	if js == nil {
		return nil, errors.New("notifier: nil JetStream")
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("notifier: %w", err)
	}
	opts = opts.withDefaults()
	seen := make(map[string]string, len(endpoints))
	eps := make([]Endpoint, 0, len(endpoints))
	for i, e := range endpoints {
		e = e.withDefaults()
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("notifier: endpoint %d (%s): %w", i, e.Name, err)
		}
		durable := DurableName(e.Name)
		if other, dup := seen[durable]; dup {
			return nil, fmt.Errorf("notifier: endpoints %q and %q share the consumer name %s", other, e.Name, durable)
		}
		seen[durable] = e.Name
		if opts.ackWait(e.Timeout) <= e.Timeout {
			return nil, fmt.Errorf("notifier: endpoint %s: ack wait %s must exceed the timeout %s", e.Name, opts.AckWait, e.Timeout)
		}
		eps = append(eps, e)
	}
	for i, e := range eps {
		// Taking over a consumer that feeds an endpoint would move it.
		if _, live := seen[DurableName(e.LegacyName)]; live && e.LegacyName != "" {
			eps[i].LegacyName = ""
		}
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("notifier: register metrics: %w", err)
	}
	return &Notifier{js: js, endpoints: eps, opts: opts, metrics: m}, nil
}

// Endpoints returns the endpoints with their defaults filled in.
func (n *Notifier) Endpoints() []Endpoint {
	return append([]Endpoint(nil), n.endpoints...)
}

// Run creates or updates each endpoint's durable consumer (taking over the
// one of its LegacyName, see Endpoint) and the AttemptsBucket, and delivers events until ctx is done. It then stops
// taking events, hands back the ones it had taken but not started (so
// another notifier gets them at once) and waits for the deliveries in
// flight, each bounded by its endpoint's Timeout. An endpoint whose
// consumer vanishes (deleted, or lost with the store of a NATS server that
// restarted without it) gets a new one once the stream exists again, while
// the other endpoints carry on (events.RecreateConsumer). It returns nil after a
// shutdown through ctx, or the error that stopped it, such as a closed
// connection. The streams must exist (events.EnsureStreams).
func (n *Notifier) Run(ctx context.Context) error {
	var attempts attemptLog
	if len(n.endpoints) > 0 {
		var ttl time.Duration
		for _, e := range n.endpoints {
			ttl = max(ttl, e.MaxAge+maxRetryAfter)
		}
		kv, err := newReopeningAttempts(ctx, n.js, ttl)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("notifier: attempts bucket: %w", err)
		}
		attempts = kv
	}
	consumers := make([]jetstream.Consumer, len(n.endpoints))
	for i, e := range n.endpoints {
		c, err := n.ensureConsumer(ctx, e)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("notifier: consumer for %s: %w", e.Name, err)
		}
		consumers[i] = c
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for i, e := range n.endpoints {
		client := n.opts.HTTPClient
		if e.TLSConfig != nil {
			client = newHTTPClient(n.opts.Concurrency, e.TLSConfig)
		}
		h := &handler{
			ep:      e,
			client:  client,
			opts:    n.opts,
			metrics: n.metrics,
			log:     n.opts.Logger,
			deadLetter: func(ctx context.Context, d DeadLetter) error {
				return publishDeadLetter(ctx, n.js, d)
			},
			attempts: attempts,
		}
		wg.Go(func() {
			cons := consumers[i]
			for {
				err := n.consume(ctx, cons, h)
				if errors.Is(err, errConsumerGone) {
					// After a store wipe there is no consumer of e's legacy
					// name either: the new one starts at the new stream's
					// first event.
					cons, err = events.RecreateConsumer(ctx, n.opts.Logger.With("endpoint", e.Name), "webhook", err,
						100*time.Millisecond, func(ctx context.Context) (jetstream.Consumer, error) { return n.ensureConsumer(ctx, e) })
					if err == nil {
						continue
					}
				}
				if err != nil && ctx.Err() == nil {
					cancel(fmt.Errorf("notifier: endpoint %s: %w", e.Name, err))
				}
				return
			}
		})
	}
	wg.Go(func() { n.refreshDLQDepth(ctx) })
	wg.Wait()

	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// consume runs one endpoint: at most Concurrency deliveries at a time, each
// in its own goroutine, taken from the consumer only when a slot is free.
// It returns an error wrapping errConsumerGone when the consumer no longer
// exists, after the deliveries in flight are finished.
func (n *Notifier) consume(ctx context.Context, cons jetstream.Consumer, h *handler) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(n.opts.Concurrency), jetstream.PullExpiry(events.PullExpiry))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()

	// Deliveries outlive ctx: an attempt that has started is finished.
	work := context.WithoutCancel(ctx)
	slots := make(chan struct{}, n.opts.Concurrency)
	var inflight sync.WaitGroup
	defer inflight.Wait()

	misses := 0 // heartbeats missed in a row
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			n.handBack(it, h)
			return nil
		}
		msg, err := it.Next()
		if err != nil {
			<-slots
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			if events.ConsumerGone(ctx, n.js, DurableName(h.ep.Name), err) {
				return fmt.Errorf("%w: %w", errConsumerGone, err)
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return fmt.Errorf("consume: %w", err)
			}
			// Missed heartbeats and the like: the iterator recovers.
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				misses++
				h.log.Log(ctx, events.HeartbeatMissLevel(misses), "webhook: no heartbeat from the consumer; pulling again", "endpoint", h.ep.Name, "in_a_row", misses)
				continue
			}
			h.log.Warn("webhook: consume", "endpoint", h.ep.Name, "err", err)
			continue
		}
		misses = 0
		if ctx.Err() != nil {
			// Taken from the prefetch buffer after shutdown began.
			nak(msg, h)
			<-slots
			n.handBack(it, h)
			return nil
		}
		inflight.Go(func() {
			defer func() { <-slots }()
			h.handle(work, msg)
		})
	}
}

// handBack naks what is left in the prefetch buffer of a draining iterator
// so that the server redelivers it now rather than after the ack wait.
func (n *Notifier) handBack(it jetstream.MessagesContext, h *handler) {
	for {
		msg, err := it.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			return
		}
		nak(msg, h)
	}
}

func nak(msg jetstream.Msg, h *handler) {
	if err := msg.Nak(); err != nil {
		h.log.Debug("webhook: hand back on shutdown", "endpoint", h.ep.Name, "err", err)
	}
}

// refreshDLQDepth keeps llmproxy_webhook_dlq_depth current until ctx is
// done.
func (n *Notifier) refreshDLQDepth(ctx context.Context) {
	t := time.NewTicker(n.opts.DLQDepthInterval)
	defer t.Stop()
	for {
		if s, err := n.js.Stream(ctx, events.DLQStreamName); err == nil {
			if info, err := s.Info(ctx); err == nil {
				n.metrics.dlqDepth.Set(float64(info.State.Msgs))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
