// Package recorder writes every RequestCompleted event to PostgreSQL, for
// long-term, SQL-queryable request logs and usage reports, and reads the
// request log back from PostgreSQL (Query) or straight from the JetStream
// stream (ReadStream).
//
// Writing is at least once from the stream and exactly once in the table:
// a batch is inserted in one transaction that skips request ids already
// present, and its events are acknowledged only after the commit. A
// recorder that dies between the commit and the acks gets the events again
// and writes nothing twice. Any number of recorders may run; they share the
// durable consumer.
package recorder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// Recorder copies events from the stream into PostgreSQL. Create it with
// New and start it with Run; it must not be copied.
type Recorder struct {
	js      jetstream.JetStream
	pool    *pgxpool.Pool
	opts    Options
	metrics *metrics

	// afterCommit, when set (tests), runs between a batch's commit and its
	// acks; false skips the acks, as if the process had died there.
	afterCommit func() bool
}

// New checks the options and returns a Recorder. It does no I/O; the
// table must exist (Migrate) and the streams too (events.EnsureStreams).
func New(js jetstream.JetStream, pool *pgxpool.Pool, opts Options) (*Recorder, error) {
	if js == nil {
		return nil, errors.New("recorder: nil JetStream")
	}
	if pool == nil {
		return nil, errors.New("recorder: nil pool")
	}
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("recorder: %w", err)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("recorder: register metrics: %w", err)
	}
	return &Recorder{js: js, pool: pool, opts: opts, metrics: m}, nil
}

func (r *Recorder) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       r.opts.Durable,
		Description:   "LLMProxy request log to PostgreSQL",
		FilterSubject: events.SubjectCompletedAll,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       r.opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 4 * r.opts.BatchSize,
		MaxWaiting:    512,
	}
}

// Run creates or updates the durable consumer and writes batches until ctx
// is done. A batch whose write has begun is finished (bounded by
// WriteTimeout); events fetched but not yet written are handed back for
// immediate redelivery. A consumer that disappears (a NATS server that
// came back with an empty store) is created again once its stream exists
// again, and recording resumes. Run returns nil after a shutdown through
// ctx, or the error that stopped it.
func (r *Recorder) Run(ctx context.Context) error {
	cons, err := r.js.CreateOrUpdateConsumer(ctx, events.StreamName, r.consumerConfig())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("recorder: consumer: %w", err)
	}
	log := r.opts.Logger
	for ctx.Err() == nil {
		batch, err := cons.Fetch(r.opts.BatchSize, jetstream.FetchMaxWait(r.opts.BatchWait), jetstream.FetchMaxBytes(r.batchBytes()))
		var msgs []jetstream.Msg
		if err == nil {
			msgs = make([]jetstream.Msg, 0, r.opts.BatchSize)
			for m := range batch.Messages() {
				msgs = append(msgs, m)
			}
			if err = batch.Error(); errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
				err = nil
			}
		}
		if err != nil && ctx.Err() == nil {
			if events.ConsumerGone(ctx, r.js, r.opts.Durable, err) {
				cons, err = events.RecreateConsumer(ctx, log.With("consumer", r.opts.Durable), "recorder", err, r.opts.RetryWait,
					func(ctx context.Context) (jetstream.Consumer, error) {
						return r.js.CreateOrUpdateConsumer(ctx, events.StreamName, r.consumerConfig())
					})
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("recorder: consumer: %w", err)
				}
				continue
			}
			r.metrics.errors.WithLabelValues(errFetch).Inc()
			log.Warn("recorder: fetch", "err", err)
			if len(msgs) == 0 {
				sleep(ctx, r.opts.RetryWait)
			}
		}
		if len(msgs) == 0 {
			continue
		}
		if ctx.Err() != nil {
			// Shutting down before the write began: hand the batch back.
			for _, m := range msgs {
				_ = m.Nak()
			}
			return nil
		}
		r.process(context.WithoutCancel(ctx), msgs)
	}
	return nil
}

// batchHeadroom is what a delivered event may weigh beyond the server's
// max_payload, which bounds only headers and data: its subject and reply
// subject.
const batchHeadroom = 64 << 10

// batchBytes is the byte budget of one fetch: BatchBytes, and never less
// than the largest event the server takes. The server answers a fetch whose
// budget is smaller than the next event with nothing at all, which would
// stop the recorder at that event for good.
func (r *Recorder) batchBytes() int {
	return max(r.opts.BatchBytes, int(r.js.Conn().MaxPayload())+batchHeadroom)
}

// process writes one batch and settles each of its messages: ack after the
// commit, term for a poison message, nak with delay when the write failed.
func (r *Recorder) process(ctx context.Context, msgs []jetstream.Msg) {
	log := r.opts.Logger
	rows := make([][]any, 0, len(msgs))
	ok := make([]jetstream.Msg, 0, len(msgs))
	seen := make(map[string]bool, len(msgs))
	var dups []jetstream.Msg
	for _, m := range msgs {
		var received time.Time
		if md, err := m.Metadata(); err == nil {
			received = md.Timestamp
		}
		id, row, err := toRow(m.Data(), received)
		if err != nil {
			r.poison(m, err)
			continue
		}
		if seen[id] {
			// The same request published twice under other message ids:
			// one row is enough, both messages are settled with the batch.
			dups = append(dups, m)
			continue
		}
		seen[id] = true
		rows = append(rows, row)
		ok = append(ok, m)
	}
	if len(rows) == 0 {
		return
	}
	// The server redelivers a batch that is not settled within AckWait;
	// while its transaction runs, tell it the batch is still being worked
	// on, so that AckWait can stay short (a crashed recorder's batch comes
	// back quickly) whatever the write takes.
	stopKeepAlive := r.keepAlive(append(ok[:len(ok):len(ok)], dups...))
	defer stopKeepAlive()
	err := r.writeAll(ctx, rows)
	var pgErr *pgconn.PgError
	if err != nil && errors.As(err, &pgErr) && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23") {
		// A data error in one row fails the whole batch: find it by
		// writing the rows one at a time.
		log.Warn("recorder: batch rejected, writing events one by one", "events", len(rows), "err", err)
		r.writeEach(ctx, rows, ok)
		stopKeepAlive()
		r.ack(dups)
		return
	}
	stopKeepAlive()
	if err != nil {
		r.metrics.errors.WithLabelValues(errWrite).Inc()
		log.Error("recorder: write batch; events will be redelivered", "events", len(rows), "err", err)
		for _, m := range append(ok, dups...) {
			_ = m.NakWithDelay(r.opts.RetryWait)
		}
		return
	}
	if r.afterCommit != nil && !r.afterCommit() {
		return
	}
	r.ack(append(ok, dups...))
}

// keepAlive sends a progress acknowledgement for msgs every third of
// AckWait until the returned function is called (which may be called more
// than once, and returns once no more are sent).
func (r *Recorder) keepAlive(msgs []jetstream.Msg) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(max(r.opts.AckWait/3, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-stopped
	}
}

// writeEach writes rows one at a time, after a batch was refused for a
// data error. A row PostgreSQL refuses for a data exception (class 22) is
// written again with its request body as a JSON string, then without its
// request body and response, so that a request is never missing from the log because
// of what its client sent; only a row refused in every form is poison.
func (r *Recorder) writeEach(ctx context.Context, rows [][]any, msgs []jetstream.Msg) {
	for i, row := range rows {
		err := r.writeAll(ctx, rows[i:i+1])
		if isDataException(err) {
			r.opts.Logger.Warn("recorder: event refused, storing its request body as text", "request_id", row[0], "err", err)
			err = r.writeAll(ctx, [][]any{bodyAsText(row)})
		}
		if isDataException(err) {
			r.opts.Logger.Warn("recorder: event refused, storing it without its bodies", "request_id", row[0], "err", err)
			bare, berr := withoutBodies(row)
			if berr != nil {
				err = fmt.Errorf("%w; without bodies: %w", err, berr)
			} else {
				err = r.writeAll(ctx, [][]any{bare})
			}
		}
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			r.ack(msgs[i : i+1])
		case errors.As(err, &pgErr) && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23"):
			r.poison(msgs[i], err)
		default:
			r.metrics.errors.WithLabelValues(errWrite).Inc()
			r.opts.Logger.Error("recorder: write event; it will be redelivered", "request_id", row[0], "err", err)
			_ = msgs[i].NakWithDelay(r.opts.RetryWait)
		}
	}
}

// isDataException reports whether err is a PostgreSQL data exception
// (SQLSTATE class 22): a value the column's type refuses.
func isDataException(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}

func (r *Recorder) ack(msgs []jetstream.Msg) {
	for _, m := range msgs {
		if err := m.Ack(); err != nil {
			r.metrics.errors.WithLabelValues(errAck).Inc()
			r.opts.Logger.Warn("recorder: ack", "err", err)
		}
	}
}

// poison terminates a message that can never be stored, so that it is not
// redelivered, and says why in the log. It sends a plain Term: servers
// before 2.10.4 ignore a term with a reason, and with MaxDeliver -1 the
// message would come back every AckWait for ever.
func (r *Recorder) poison(m jetstream.Msg, reason error) {
	r.metrics.errors.WithLabelValues(errPoison).Inc()
	attrs := []any{"subject", m.Subject(), "reason", reason.Error()}
	if md, err := m.Metadata(); err == nil {
		attrs = append(attrs, "stream_seq", md.Sequence.Stream)
	}
	r.opts.Logger.Error("recorder: poison event terminated", attrs...)
	if err := m.Term(); err != nil {
		r.metrics.errors.WithLabelValues(errAck).Inc()
	}
}

// writeAll inserts rows in one transaction: COPY into a session-local
// staging table, then one INSERT that skips request ids already stored.
func (r *Recorder) writeAll(ctx context.Context, rows [][]any) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.WriteTimeout)
	defer cancel()
	start := time.Now()
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS llmproxy_requests_in
		(LIKE `+Table+` INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`); err != nil {
		return fmt.Errorf("staging table: %w", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"llmproxy_requests_in"}, columns, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	// No conflict target: the table may be partitioned by day with a
	// primary key of (request_id, ts), and a repeated event has the same ts.
	tag, err := tx.Exec(ctx, `INSERT INTO `+Table+` (`+columnList+`) SELECT `+columnList+
		` FROM llmproxy_requests_in ON CONFLICT DO NOTHING`)
	if err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	r.metrics.batch.Observe(time.Since(start).Seconds())
	r.metrics.written.Add(float64(tag.RowsAffected()))
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
