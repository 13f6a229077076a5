// Package meter turns RequestCompleted events into ledger entries. Every
// meter process pulls from one durable JetStream consumer, so adding a
// process adds throughput; the ledger's idempotence by request id makes a
// redelivered event count once.
//
// Delivery rules: an event is acked only after the store has it (Apply
// returned nil); a failed store write naks the batch with a growing delay,
// so nothing is lost; an event that can never be applied (a body that does
// not decode, lacks its request id, key id or time, or carries a token
// count above events.MaxTokenCount) is a poison message:
// it is logged with the reason, terminated so that it does not hold up the
// stream, and counted.
package meter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Meter applies events from the stream to a ledger store. Run may be called
// by one goroutine at a time; separate Meters (in one process or many) share
// the work.
type Meter struct {
	js    jetstream.JetStream
	store ledger.Store
	opts  Options
	log   *slog.Logger
	m     *metrics

	// logMu guards the rate limit of the lines logged per event or per
	// batch: when the last of each kind went out, and how many were left
	// out since.
	logMu    sync.Mutex
	logLast  map[string]time.Time
	logSkips map[string]int

	// failed is why the last batch the store was asked to apply was not
	// applied (nil once one is); Ready reports it.
	failed atomic.Pointer[error]
}

// Ready reports why the meter's last batch was not applied, or nil when it
// was (or none was tried yet): a store that refuses its writes or cannot
// have them replicated leaves the events in the stream, to be delivered
// again, and /readyz says so until a batch is applied.
func (mt *Meter) Ready() error {
	if err := mt.failed.Load(); err != nil {
		return fmt.Errorf("meter: the last batch was not applied (its events wait in the stream): %w", *err)
	}
	return nil
}

// logInterval is the least time between two lines of one kind logged per
// event or per batch: a publisher sending nothing but poison, or a ledger
// that is down, would otherwise fill the log at the event rate. The
// metrics count every one.
const logInterval = 10 * time.Second

// logLimited logs msg at level unless a line with the same msg went out
// less than logInterval ago; the next one that goes out says how many were
// left out ("suppressed").
func (mt *Meter) logLimited(level slog.Level, msg string, attrs ...any) {
	now := time.Now()
	mt.logMu.Lock()
	if mt.logLast == nil {
		mt.logLast, mt.logSkips = map[string]time.Time{}, map[string]int{}
	}
	if last, ok := mt.logLast[msg]; ok && now.Sub(last) < logInterval {
		mt.logSkips[msg]++
		mt.logMu.Unlock()
		return
	}
	skipped := mt.logSkips[msg]
	mt.logLast[msg], mt.logSkips[msg] = now, 0
	mt.logMu.Unlock()
	if skipped > 0 {
		attrs = append(attrs, "suppressed", skipped)
	}
	mt.log.Log(context.Background(), level, msg, attrs...)
}

// New returns a Meter reading events through js into store. It does not
// touch the server; Run creates the consumer.
func New(js jetstream.JetStream, store ledger.Store, opts Options) (*Meter, error) {
	if js == nil || store == nil {
		return nil, errors.New("meter: nil JetStream or store")
	}
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("meter: register metrics: %w", err)
	}
	return &Meter{js: js, store: store, opts: opts, log: opts.Logger, m: m}, nil
}

// ConsumerConfig returns the durable consumer the meters share: every
// RequestCompleted subject, explicit acks, redelivered without limit.
func (mt *Meter) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       mt.opts.Durable,
		Description:   "LLMProxy meter: request-completed events into the ledger",
		FilterSubject: events.SubjectCompletedAll,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       mt.opts.AckWait,
		MaxAckPending: mt.opts.MaxAckPending,
		MaxDeliver:    -1,
	}
}

// Run creates (or updates) the durable consumer on the LLMPROXY stream,
// which must exist (the wiring calls events.EnsureStreams with the
// configured retention and replicas), and applies events until
// ctx is cancelled, then returns nil after the batch under way is applied
// and acked; events fetched but not yet applied are nak'ed for immediate
// redelivery. A consumer that vanishes (a NATS server that came back with
// an empty store) is created again once its stream exists again
// (recreateConsumer). It returns an error when the consumer cannot be
// created at start or the NATS connection is closed.
func (mt *Meter) Run(ctx context.Context) error {
	cons, err := mt.createConsumer(ctx)
	if err != nil {
		return fmt.Errorf("meter: create consumer %s: %w", mt.opts.Durable, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { mt.watchLag(ctx) })
	defer wg.Wait()

	wait := 100 * time.Millisecond
	for {
		err := mt.consume(ctx, cons)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionClosed) {
			return fmt.Errorf("meter: %w", err)
		}
		if errors.Is(err, errConsumerGone) {
			if cons, err = events.RecreateConsumer(ctx, mt.log.With("consumer", mt.opts.Durable), "meter", err,
				100*time.Millisecond, mt.createConsumer); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("meter: %w", err)
			}
			wait = 100 * time.Millisecond
			continue
		}
		mt.log.Warn("meter: consuming stopped; resuming", "err", err, "after", wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		}
		wait = min(wait*2, 5*time.Second)
		if c, err := mt.createConsumer(ctx); err == nil {
			cons, wait = c, 100*time.Millisecond
		} else if ctx.Err() == nil {
			mt.log.Warn("meter: recreate consumer", "consumer", mt.opts.Durable, "err", err)
		}
	}
}

// errConsumerGone is returned by consume when the durable consumer no
// longer exists.
var errConsumerGone = errors.New("consumer is gone")

// createConsumer creates or updates the meters' durable consumer.
func (mt *Meter) createConsumer(ctx context.Context) (jetstream.Consumer, error) {
	return mt.js.CreateOrUpdateConsumer(ctx, events.StreamName, mt.ConsumerConfig())
}

// consume pulls batches until ctx is cancelled or the iterator fails. A
// batch is the first event to arrive plus whatever follows within
// BatchWait, up to BatchSize. It returns an error wrapping errConsumerGone
// when the consumer no longer exists.
func (mt *Meter) consume(ctx context.Context, cons jetstream.Consumer) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(2*mt.opts.BatchSize), jetstream.PullExpiry(events.PullExpiry))
	if err != nil {
		return fmt.Errorf("pull from consumer %s: %w", mt.opts.Durable, err)
	}
	defer mt.release(it)
	b := newBatch(mt.opts.BatchSize)
	misses := 0 // heartbeats missed in a row
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil && events.ConsumerGone(ctx, mt.js, mt.opts.Durable, err) {
			return fmt.Errorf("%w: %w", errConsumerGone, err)
		}
		if errors.Is(err, jetstream.ErrNoHeartbeat) {
			// The server held no pull request of ours (see
			// events.PullExpiry); the next Next sends a new one.
			misses++
			mt.log.Log(ctx, events.HeartbeatMissLevel(misses), "meter: no heartbeat from the consumer; pulling again", "consumer", mt.opts.Durable, "in_a_row", misses)
			continue
		}
		if err != nil {
			return err
		}
		misses = 0
		b.msgs = append(b.msgs[:0], msg)
		bctx, cancel := context.WithTimeout(ctx, mt.opts.BatchWait)
		for len(b.msgs) < mt.opts.BatchSize {
			msg, err := it.Next(jetstream.NextContext(bctx))
			if err != nil {
				break // a lasting error shows again on the next Next
			}
			b.msgs = append(b.msgs, msg)
		}
		cancel()
		mt.process(ctx, b)
	}
}

// release stops the iterator and naks the events it had fetched but not
// handed out, so that another meter gets them now rather than after
// AckWait.
func (mt *Meter) release(it jetstream.MessagesContext) {
	it.Drain()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		msg, err := it.Next(jetstream.NextMaxWait(100 * time.Millisecond))
		if err != nil {
			break
		}
		_ = msg.Nak()
	}
	it.Stop()
}

// batch holds one batch's messages and the entries decoded from them; it
// is reused from batch to batch.
type batch struct {
	msgs    []jetstream.Msg
	entries []ledger.Entry
	ok      []jetstream.Msg // the message of each entry
}

func newBatch(n int) *batch {
	return &batch{
		msgs:    make([]jetstream.Msg, 0, n),
		entries: make([]ledger.Entry, 0, n),
		ok:      make([]jetstream.Msg, 0, n),
	}
}

// process applies one batch: poison messages are terminated, the rest are
// written to the store in one Apply and acked, or nak'ed if it fails. The
// write runs to completion even when ctx is cancelled meanwhile.
func (mt *Meter) process(ctx context.Context, b *batch) {
	start := time.Now()
	b.entries, b.ok = b.entries[:0], b.ok[:0]
	for _, msg := range b.msgs {
		e, err := entryFromEvent(msg.Data())
		if errors.Is(err, errNothingToApply) {
			_ = msg.Ack()
			mt.m.skipped.Inc()
			continue
		}
		if err != nil {
			mt.poison(msg, err)
			continue
		}
		b.entries = append(b.entries, e)
		b.ok = append(b.ok, msg)
	}
	if len(b.entries) > 0 {
		mt.apply(ctx, b.entries, b.ok)
	}
	mt.m.batch.Observe(time.Since(start).Seconds())
	clear(b.msgs)
	clear(b.ok)
}

func (mt *Meter) apply(ctx context.Context, entries []ledger.Entry, msgs []jetstream.Msg) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mt.opts.ApplyTimeout)
	applied, err := mt.store.Apply(actx, entries)
	cancel()
	switch {
	case err == nil:
		mt.failed.Store(nil)
		for _, msg := range msgs {
			// A lost ack means a redelivery, which the ledger ignores.
			_ = msg.Ack()
		}
		mt.m.applied.Add(float64(applied))
		mt.m.duplicate.Add(float64(len(entries) - applied))
	case errors.Is(err, ledger.ErrInvalidEntry) && len(entries) > 1:
		// The store refuses the whole batch for one entry; find it.
		for i := range entries {
			mt.apply(ctx, entries[i:i+1], msgs[i:i+1])
		}
	case errors.Is(err, ledger.ErrInvalidEntry):
		mt.poison(msgs[0], err)
	case errors.Is(err, ledger.ErrClosed):
		// The process is stopping (the store closed under a batch): no
		// failure to report; the events are delivered again at the
		// next start.
		for _, msg := range msgs {
			_ = msg.Nak()
		}
	default:
		mt.failed.Store(&err)
		mt.m.applyErrors.Inc()
		mt.logLimited(slog.LevelError, "meter: ledger write failed; events will be redelivered", "events", len(entries), "err", err)
		for _, msg := range msgs {
			_ = msg.NakWithDelay(mt.nakDelay(msg))
		}
	}
}

// nakDelay doubles NakDelay with every delivery of msg, up to MaxNakDelay.
func (mt *Meter) nakDelay(msg jetstream.Msg) time.Duration {
	d := mt.opts.NakDelay
	md, err := msg.Metadata()
	if err != nil {
		return d
	}
	for i := uint64(1); i < md.NumDelivered && d < mt.opts.MaxNakDelay; i++ {
		d *= 2
	}
	return min(d, mt.opts.MaxNakDelay)
}

// poison terminates a message that can never be applied, saying why in
// the log (at most a line per logInterval; the event stays in the stream,
// and the line names its sequence). It sends a plain Term: servers before 2.10.4 ignore a term with
// a reason, and the message would come back every AckWait for ever.
func (mt *Meter) poison(msg jetstream.Msg, reason error) {
	mt.m.poison.Inc()
	attrs := []any{"subject", msg.Subject(), "reason", reason}
	if md, err := msg.Metadata(); err == nil {
		attrs = append(attrs, "stream_seq", md.Sequence.Stream)
	}
	mt.logLimited(slog.LevelError, "meter: poison event terminated", attrs...)
	_ = msg.Term()
}

// watchLag refreshes llmproxy_meter_lag every LagInterval until ctx is
// cancelled. The lag is every event the consumer has not had acked: those
// not yet delivered and those delivered but not applied. A ledger that is
// down leaves its events delivered and nak'ed, waiting for redelivery
// (up to MaxAckPending of them), and they are lag all the same.
func (mt *Meter) watchLag(ctx context.Context) {
	t := time.NewTicker(mt.opts.LagInterval)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, mt.opts.LagInterval)
		if c, err := mt.js.Consumer(qctx, events.StreamName, mt.opts.Durable); err == nil {
			info := c.CachedInfo()
			mt.m.lag.Set(float64(info.NumPending) + float64(info.NumAckPending))
		}
		cancel()
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
