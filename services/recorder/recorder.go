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
	"log/slog"
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

	// refusedSeqs are the stream sequences of the events the table
	// refused and this recorder has not stored since, with when each was
	// last refused; refusedSince is when the first of them was, and
	// refusedErr the latest refusal (see Refusing).
	refMu        sync.Mutex
	refusedSeqs  map[uint64]time.Time
	refusedSince time.Time
	refusedErr   error
	// failLog rate-limits the lines of failed writes: one per
	// failLogEvery, counting those left out.
	failMu     sync.Mutex
	failLogged time.Time
	failLeft   int
}

// failLogEvery is the least time between two lines about failed writes: a
// database that is down, or a table that refuses every event, fails every
// batch.
const failLogEvery = 10 * time.Second

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
		// Events the table refuses stay pending until it takes them:
		// room for many of them before the consumer stops delivering.
		MaxAckPending: max(4*r.opts.BatchSize, 20_000),
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
	var backoff time.Duration
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
		if r.process(context.WithoutCancel(ctx), msgs) {
			backoff = 0
			continue
		}
		// Nothing of the batch was stored (PostgreSQL down, or the table
		// refusing): wait longer each time, up to maxBackoff, rather
		// than fail the next batch at once.
		backoff = min(max(2*backoff, r.opts.RetryWait), maxBackoff)
		sleep(ctx, backoff)
	}
	return nil
}

// maxBackoff bounds the wait after batches that stored nothing.
const maxBackoff = 30 * time.Second

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
// It reports false when the write stored none of the batch's events and
// failed (PostgreSQL down, or the table refusing them), for Run to wait.
func (r *Recorder) process(ctx context.Context, msgs []jetstream.Msg) bool {
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
		return true
	}
	// The server redelivers a batch that is not settled within AckWait;
	// while its transaction runs, tell it the batch is still being worked
	// on, so that AckWait can stay short (a crashed recorder's batch comes
	// back quickly) whatever the write takes.
	stopKeepAlive := r.keepAlive(append(ok[:len(ok):len(ok)], dups...))
	defer stopKeepAlive()
	err := r.writeAll(ctx, rows)
	if err != nil && !outage(err) {
		// PostgreSQL refused the batch (a value of one row, a
		// constraint or trigger of the table): find the rows it refuses
		// by writing them one at a time, so that the others are stored.
		r.logFailure(slog.LevelWarn, "recorder: batch refused, writing events one by one", "events", len(rows), "err", err)
		stored, down := r.writeEach(ctx, rows, ok)
		stopKeepAlive()
		// A duplicate's twin was settled with its row; should the row be
		// handed back, the duplicate comes back with it, harmlessly.
		r.ack(dups)
		return stored > 0 || !down
	}
	stopKeepAlive()
	if err != nil {
		r.metrics.errors.WithLabelValues(errWrite).Inc()
		r.logFailure(slog.LevelError, "recorder: write batch; events will be redelivered", "events", len(rows), "err", err)
		r.nak(append(ok, dups...))
		return false
	}
	r.stored(ok)
	if r.afterCommit != nil && !r.afterCommit() {
		return true
	}
	r.ack(append(ok, dups...))
	return true
}

// nak hands msgs back for redelivery after RetryWait.
func (r *Recorder) nak(msgs []jetstream.Msg) {
	for _, m := range msgs {
		_ = m.NakWithDelay(r.opts.RetryWait)
	}
}

// logFailure logs a failed write at most once per failLogEvery, with
// "suppressed", how many were left out since the last line.
func (r *Recorder) logFailure(level slog.Level, msg string, args ...any) {
	r.failMu.Lock()
	now := time.Now()
	if now.Sub(r.failLogged) < failLogEvery {
		r.failLeft++
		r.failMu.Unlock()
		return
	}
	if r.failLeft > 0 {
		args = append(args, "suppressed", r.failLeft)
	}
	r.failLogged, r.failLeft = now, 0
	r.failMu.Unlock()
	r.opts.Logger.Log(context.Background(), level, msg, args...)
}

// Refusing reports the table refusing events: a constraint, trigger,
// privilege or column of the table that PostgreSQL refuses them for, which
// waiting alone does not fix. Those events wait in the stream, for as long
// as it keeps them, until the table takes them. nil while it does.
func (r *Recorder) Refusing() error {
	r.refMu.Lock()
	defer r.refMu.Unlock()
	// An event not seen again for long enough (stored by another
	// recorder, or gone from the stream) no longer counts.
	for seq, at := range r.refusedSeqs {
		if time.Since(at) > 2*maxRefusedDelay+time.Minute {
			delete(r.refusedSeqs, seq)
		}
	}
	if len(r.refusedSeqs) == 0 {
		return nil
	}
	return fmt.Errorf("the table %s refuses events since %s, %d of them now (%w); they wait in the stream (nats.stream.max_age) until it takes them",
		Table, r.refusedSince.UTC().Format(time.RFC3339), len(r.refusedSeqs), r.refusedErr)
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

// writeEach writes rows one at a time, after a batch was refused, and
// returns how many it stored and whether it met an outage. A row PostgreSQL
// refuses for a data exception (class 22) is written again with its request
// body as a JSON string, then without its request body and response, so
// that a request is never missing from the log because of what its client
// sent; a row refused in every form is poison only if the recorder's own
// layout of the table would refuse it too (the event's values are at
// fault). Any other refusal is the table's (a constraint, trigger, column
// type or privilege an operator changed): the row is handed back, later
// each time it comes back (refusedDelay), so that it does not crowd out the
// events after it, and the refusal recorded (Refusing). At an outage (the
// database refusing connections) the rows left are handed back at once.
func (r *Recorder) writeEach(ctx context.Context, rows [][]any, msgs []jetstream.Msg) (stored int, down bool) {
	for i, row := range rows {
		if down {
			_ = msgs[i].NakWithDelay(r.opts.RetryWait)
			continue
		}
		err := r.writeAll(ctx, rows[i:i+1])
		if isDataException(err) {
			r.opts.Logger.Warn("recorder: event refused, storing its request body as text", "request_id", row[0], "err", err)
			err = r.writeAll(ctx, [][]any{bodyAsText(row)})
		}
		var bare []any
		if isDataException(err) {
			r.opts.Logger.Warn("recorder: event refused, storing it without its bodies", "request_id", row[0], "err", err)
			var berr error
			if bare, berr = withoutBodies(row); berr != nil {
				err = fmt.Errorf("%w; without bodies: %w", err, berr)
			} else {
				err = r.writeAll(ctx, [][]any{bare})
			}
		}
		switch {
		case err == nil:
			stored++
			r.stored(msgs[i : i+1])
			r.ack(msgs[i : i+1])
		case outage(err):
			down = true
			r.metrics.errors.WithLabelValues(errWrite).Inc()
			r.logFailure(slog.LevelError, "recorder: write event; it will be redelivered", "request_id", row[0], "err", err)
			_ = msgs[i].NakWithDelay(r.opts.RetryWait)
		case isDataException(err) && (bare == nil || !r.fitsOwnLayout(ctx, bare)):
			r.poison(msgs[i], err)
		default:
			r.metrics.errors.WithLabelValues(errWrite).Inc()
			r.refused(msgs[i], err)
			r.logFailure(slog.LevelError, "recorder: the table refuses an event; it will be redelivered", "request_id", row[0], "err", err)
		}
	}
	return stored, down
}

// outage reports a failure of the database rather than a refusal of rows:
// no answer, or PostgreSQL refusing the connection or the session (classes
// 08 connection, 28 authorization, 3D database, 53 resources, 57 operator
// intervention, 58 system error).
func outage(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true
	}
	switch pgErr.Code[:2] {
	case "08", "28", "3D", "53", "57", "58":
		return true
	}
	return false
}

// ownLayout is the request-log table as Migrate makes it, as a temporary
// table: fitsOwnLayout tries a row there.
var ownLayout = strings.Replace(migration[1], "CREATE TABLE IF NOT EXISTS "+Table, "CREATE TEMP TABLE llmproxy_requests_own", 1) +
	" ON COMMIT DROP"

// fitsOwnLayout reports whether row, refused by the table, would be taken
// by the table as Migrate makes it: then the table was changed, and it is
// at fault, not the event. A check that cannot run says it would fit, so
// that nothing is terminated for want of an answer.
func (r *Recorder) fitsOwnLayout(ctx context.Context, row []any) bool {
	ctx, cancel := context.WithTimeout(ctx, r.opts.WriteTimeout)
	defer cancel()
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return true
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, ownLayout); err != nil {
		return true
	}
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"llmproxy_requests_own"}, columns, pgx.CopyFromRows([][]any{row}))
	return err == nil || !isDataException(err)
}

// refusedDelay is how long an event the table refused waits before it
// comes back: RetryWait, doubling with each delivery, up to maxRefusedDelay.
// Events the table keeps refusing thus come back seldom, and the consumer
// delivers the events after them meanwhile.
func (r *Recorder) refusedDelay(m jetstream.Msg) time.Duration {
	n := uint64(1)
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 0 {
		n = md.NumDelivered
	}
	d := r.opts.RetryWait
	for ; n > 1 && d < maxRefusedDelay; n-- {
		d *= 2
	}
	return min(d, maxRefusedDelay)
}

// maxRefusedDelay bounds refusedDelay.
const maxRefusedDelay = 5 * time.Minute

// refused hands m back, the table having refused it for err, and records
// the refusal for Refusing.
func (r *Recorder) refused(m jetstream.Msg, err error) {
	_ = m.NakWithDelay(r.refusedDelay(m))
	seq := streamSeq(m)
	now := time.Now()
	r.refMu.Lock()
	defer r.refMu.Unlock()
	if len(r.refusedSeqs) == 0 {
		r.refusedSince = now
	}
	if r.refusedSeqs == nil {
		r.refusedSeqs = map[uint64]time.Time{}
	}
	r.refusedSeqs[seq] = now
	r.refusedErr = err
}

// stored clears the refusals of msgs, which are now in the table.
func (r *Recorder) stored(msgs []jetstream.Msg) {
	r.refMu.Lock()
	defer r.refMu.Unlock()
	if len(r.refusedSeqs) == 0 {
		return
	}
	for _, m := range msgs {
		delete(r.refusedSeqs, streamSeq(m))
	}
}

func streamSeq(m jetstream.Msg) uint64 {
	if md, err := m.Metadata(); err == nil {
		return md.Sequence.Stream
	}
	return 0
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
