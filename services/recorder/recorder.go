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
	"sync/atomic"
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
	// failLog rate-limits the lines of failed writes: one per message
	// and failLogEvery, counting those left out.
	failMu  sync.Mutex
	failLog map[string]*limitedLine
	// downSince is when writes began to fail for an outage (the
	// database failing the write itself, not the table refusing it),
	// and downErr why; zero while they succeed (see Refusing). downSeq
	// is the highest stream sequence of the events whose write failed
	// meanwhile: once the consumer's ack floor passes it, they are all
	// settled (another recorder stored them) and the outage is no
	// longer this recorder's to report.
	downSince time.Time
	downErr   error
	downSeq   uint64
	// renew asks the next write to close the pool's connections first
	// (see writing).
	renew atomic.Bool
}

// limitedLine is one message's rate limit: when it was last logged and
// how many lines were left out since.
type limitedLine struct {
	logged time.Time
	left   int
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
	if undefinedColumn(err) {
		cctx, cancel := context.WithTimeout(ctx, r.opts.WriteTimeout)
		cerr := CheckTable(cctx, r.pool)
		cancel()
		// A check that could not be made (the database gone meanwhile)
		// leaves the batch to the paths below, as any failed write.
		if errors.Is(cerr, ErrMissingColumns) {
			// A column dropped while the recorder runs: every row is
			// refused alike, so the batch is handed back whole, as the
			// table refusing it, and the columns named (at start, the
			// recorder waits for them before it consumes).
			stopKeepAlive()
			r.metrics.errors.WithLabelValues(errWrite).Inc()
			r.logFailure(slog.LevelError, "recorder: the table lacks columns the recorder writes; its events wait until they are added", "err", cerr)
			for _, m := range ok {
				r.refused(m, cerr)
			}
			r.ack(dups)
			return false
		}
	}
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
	r.writing(err, ok)
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

// logFailure logs a line of a failed write at most once per failLogEvery
// for each message, with "suppressed", how many of that message were left
// out since its last line.
func (r *Recorder) logFailure(level slog.Level, msg string, args ...any) {
	r.failMu.Lock()
	now := time.Now()
	if r.failLog == nil {
		r.failLog = map[string]*limitedLine{}
	}
	l := r.failLog[msg]
	if l == nil {
		l = &limitedLine{}
		r.failLog[msg] = l
	}
	if !l.logged.IsZero() && now.Sub(l.logged) < failLogEvery {
		l.left++
		r.failMu.Unlock()
		return
	}
	if l.left > 0 {
		args = append(args, "suppressed", l.left)
	}
	l.logged, l.left = now, 0
	r.failMu.Unlock()
	r.opts.Logger.Log(context.Background(), level, msg, args...)
}

// writing records how the latest write, of msgs, went: err, an outage, or
// nil. The first failure starts the outage that Refusing reports; the first
// success after one ends it, with a line saying so, as does Refusing once
// another recorder has stored every event whose write failed here. After a failure the next write
// starts on a session of its own: one that failed for a setting of the
// session (a role's statement_timeout, since reset) would go on failing in
// it, since a role's or database's settings apply to new sessions only.
// The pool's connections are closed just before that write (writeAll), not
// here: a session opened meanwhile (a readiness ping) has the old settings
// too.
func (r *Recorder) writing(err error, msgs []jetstream.Msg) {
	if err != nil {
		r.renew.Store(true)
	}
	r.refMu.Lock()
	defer r.refMu.Unlock()
	if err != nil {
		for _, m := range msgs {
			r.downSeq = max(r.downSeq, streamSeq(m))
		}
	}
	switch {
	case err != nil && r.downSince.IsZero():
		r.downSince, r.downErr = time.Now(), err
	case err != nil:
		r.downErr = err
	case !r.downSince.IsZero():
		r.opts.Logger.Info("recorder: writing to the table again", "failing_since", r.downSince.UTC().Format(time.RFC3339))
		r.downSince, r.downErr, r.downSeq = time.Time{}, nil, 0
	}
}

// Refusing reports writes failing for an outage that the pool's ping does
// not meet, or the table refusing events: a constraint, trigger,
// privilege or column of the table that PostgreSQL refuses them for, which
// waiting alone does not fix. Those events wait in the stream, for as long
// as it keeps them, until the table takes them. nil while it does.
func (r *Recorder) Refusing() error {
	floor, floorOK := uint64(0), false
	r.refMu.Lock()
	asked := len(r.refusedSeqs) > 0 || !r.downSince.IsZero()
	r.refMu.Unlock()
	if asked {
		floor, floorOK = r.ackFloor()
	}
	r.refMu.Lock()
	defer r.refMu.Unlock()
	if floorOK {
		// Below the consumer's ack floor every event is settled: the
		// refused ones among them were stored by another recorder.
		for seq := range r.refusedSeqs {
			if seq <= floor {
				delete(r.refusedSeqs, seq)
			}
		}
	}
	if floorOK && !r.downSince.IsZero() && r.downSeq > 0 && floor >= r.downSeq {
		// Every event whose write failed here is settled: another
		// recorder stored them (or they left the stream). Nothing waits
		// on this recorder; its next failure, if any, is reported anew.
		r.opts.Logger.Info("recorder: the events whose writes failed were stored by another recorder", "failing_since", r.downSince.UTC().Format(time.RFC3339))
		r.downSince, r.downErr, r.downSeq = time.Time{}, nil, 0
	}
	if !r.downSince.IsZero() {
		// Connections succeed (the pool's ping answers) while every
		// write fails: a statement_timeout, a full disk, an
		// administrator cancelling the statements.
		return fmt.Errorf("writes to the table %s fail since %s: %w; the events wait in the stream and are tried again",
			Table, r.downSince.UTC().Format(time.RFC3339), r.downErr)
	}
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

// ackFloor returns the stream sequence below which the recorders' consumer
// has every event acknowledged, asked of the server within a second.
func (r *Recorder) ackFloor() (uint64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	cons, err := r.js.Consumer(ctx, events.StreamName, r.opts.Durable)
	if err != nil {
		return 0, false
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, false
	}
	return info.AckFloor.Stream, true
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
// returns how many it stored and whether it met an outage. A row whose
// values the recorder's own layout of the table refuses (eventValueRefused:
// a value PostgreSQL cannot take, or one past its limits) is written again
// with its request body as a JSON string, then without its request body and
// response, so that a request is never missing from the log because of
// what its client sent; a row refused in every form is poison. Any other
// refusal is the table's (a constraint, trigger, column type or privilege
// an operator changed): the row is handed back, later each time it comes
// back (refusedDelay), so that it does not crowd out the events after it,
// and the refusal recorded (Refusing). At an outage (the database refusing
// connections) the rows left are handed back at once.
func (r *Recorder) writeEach(ctx context.Context, rows [][]any, msgs []jetstream.Msg) (stored int, down bool) {
	for i, row := range rows {
		if down {
			_ = msgs[i].NakWithDelay(r.opts.RetryWait)
			continue
		}
		err := r.writeAll(ctx, rows[i:i+1])
		if eventValueRefused(err) {
			r.logFailure(slog.LevelWarn, "recorder: an event's request body refused by PostgreSQL; storing it as text", "request_id", row[0], "err", err)
			err = r.writeAll(ctx, [][]any{bodyAsText(row)})
		}
		if eventValueRefused(err) {
			var berr error
			var bare []any
			if bare, berr = withoutBodies(row); berr != nil {
				err = fmt.Errorf("%w; without bodies: %w", err, berr)
			} else {
				r.logFailure(slog.LevelWarn, "recorder: an event's bodies refused by PostgreSQL; storing it without them", "request_id", row[0], "err", err)
				err = r.writeAll(ctx, [][]any{bare})
			}
		}
		switch {
		case err == nil:
			stored++
			r.writing(nil, nil)
			r.stored(msgs[i : i+1])
			r.ack(msgs[i : i+1])
		case outage(err):
			down = true
			r.writing(err, msgs[i:i+1])
			r.metrics.errors.WithLabelValues(errWrite).Inc()
			r.logFailure(slog.LevelError, "recorder: write event; it will be redelivered", "request_id", row[0], "err", err)
			_ = msgs[i].NakWithDelay(r.opts.RetryWait)
		case eventValueRefused(err):
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
// intervention, 58 system error), or a write that is to be waited out
// (class 40, a deadlock or serialization failure; 55P03, a lock not had
// within the session's lock_timeout, say while an ALTER TABLE runs; 25006,
// a read-only session: a standby after a failover, or a role's or
// database's default_transaction_read_only, which the sessions opened
// anew after the failure pick up once it is reset).
func outage(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true
	}
	if pgErr.Code == "55P03" || pgErr.Code == "25006" {
		return true
	}
	switch pgErr.Code[:2] {
	case "40":
		return true
	case "08", "28", "3D", "53", "57", "58":
		return true
	}
	return false
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

// undefinedColumn reports a statement naming a column the table does not
// have (SQLSTATE 42703).
func undefinedColumn(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42703"
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

// stagingTable makes the session's staging table (emptied at each commit):
// the table as Migrate makes it, without its constraints. A COPY into it
// refuses only values the recorder's own layout refuses, the event's fault,
// whatever an operator has changed in the table since; the INSERT from it
// into the table then meets the table's own refusals, under its own name.
var stagingTable = strings.NewReplacer(
	"CREATE TABLE IF NOT EXISTS "+Table, "CREATE TEMP TABLE IF NOT EXISTS llmproxy_requests_in",
	" PRIMARY KEY", "", " NOT NULL", "",
).Replace(migration[1]) + " ON COMMIT DELETE ROWS"

// copyError is a refusal of rows by the staging table.
type copyError struct{ err error }

func (e *copyError) Error() string { return "copy: " + e.err.Error() }
func (e *copyError) Unwrap() error { return e.err }

// eventValueRefused reports rows refused by the recorder's own layout (the
// staging table) for their values: a data exception (SQLSTATE class 22,
// such as a lone surrogate or a NUL in JSON) or a value past PostgreSQL's
// limits (class 54, such as a JSON document too large for jsonb).
func eventValueRefused(err error) bool {
	var ce *copyError
	var pgErr *pgconn.PgError
	return errors.As(err, &ce) && errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "54"))
}

// writeAll inserts rows in one transaction: COPY into a session-local
// staging table, then one INSERT that skips request ids already stored.
func (r *Recorder) writeAll(ctx context.Context, rows [][]any) error {
	if r.renew.Swap(false) {
		r.pool.Reset()
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.WriteTimeout)
	defer cancel()
	start := time.Now()
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, stagingTable); err != nil {
		return fmt.Errorf("staging table: %w", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"llmproxy_requests_in"}, columns, pgx.CopyFromRows(rows)); err != nil {
		return &copyError{err}
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
