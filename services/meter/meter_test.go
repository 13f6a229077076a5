package meter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var testTime = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func openStore(t testing.TB) *ledger.LocalStore {
	t.Helper()
	s, err := ledger.OpenLocal(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatalf("open ledger: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func event(i int) *events.RequestCompleted {
	return &events.RequestCompleted{
		RequestID:   fmt.Sprintf("req-%06d", i),
		KeyID:       fmt.Sprintf("key%d", i%5),
		Model:       "m",
		Timestamp:   testTime.Add(time.Duration(i) * time.Millisecond),
		Usage:       events.Usage{PromptTokens: 10 + int64(i%7), CompletionTokens: int64(i % 100), TotalTokens: 10 + int64(i%7) + int64(i%100)},
		Reservation: 50,
	}
}

// publisher publishes raw bodies asynchronously and waits for the acks.
type publisher struct {
	t  testing.TB
	js jetstream.JetStream
}

func (p publisher) raw(subject, msgID string, data []byte) {
	p.t.Helper()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	if _, err := p.js.PublishMsgAsync(m); err != nil {
		p.t.Fatalf("publish: %v", err)
	}
}

func (p publisher) event(ev *events.RequestCompleted, msgID string) {
	p.t.Helper()
	data, err := ev.Marshal()
	if err != nil {
		p.t.Fatal(err)
	}
	p.raw(events.Subject(ev.KeyID), msgID, data)
}

func (p publisher) wait() {
	p.t.Helper()
	select {
	case <-p.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		p.t.Fatal("publish acks timed out")
	}
}

// expected is what the ledger must hold for a set of events, per key in the
// never-reset period.
type expected map[string]ledger.Totals

func (x expected) add(ev *events.RequestCompleted) {
	t := x[ev.KeyID]
	t.Add(ledger.Entry{PromptTokens: ev.Usage.PromptTokens, CompletionTokens: ev.Usage.CompletionTokens})
	x[ev.KeyID] = t
}

// waitExact waits until the consumer has nothing pending or unacked and
// the ledger matches want exactly.
func waitExact(t testing.TB, js jetstream.JetStream, store ledger.Store, want expected) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]ledger.Totals
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		got, err = store.UsageAll(ctx, ledger.Never, testTime)
		drained := false
		if c, cerr := js.Consumer(ctx, events.StreamName, DefaultDurable); cerr == nil {
			info := c.CachedInfo()
			drained = info.NumPending == 0 && info.NumAckPending == 0
		}
		cancel()
		if err != nil {
			t.Fatalf("usage: %v", err)
		}
		if drained && equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger not exact (drained=%v):\n got %v\nwant %v", drained, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func equal(a map[string]ledger.Totals, b expected) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func testOptions(reg prometheus.Registerer) Options {
	return Options{Registerer: reg, AckWait: 3 * time.Second, NakDelay: 50 * time.Millisecond, MaxNakDelay: 200 * time.Millisecond, LagInterval: 50 * time.Millisecond}
}

// run starts m.Run and returns a function that stops it and returns its
// error.
func run(t testing.TB, m *Meter) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				err = errors.New("Run did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func newMeter(t testing.TB, js jetstream.JetStream, store ledger.Store, o Options) *Meter {
	t.Helper()
	m, err := New(js, store, o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMeterExactWithRedeliveredDuplicates(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := openStore(t)
	m := newMeter(t, js, store, testOptions(prometheus.NewRegistry()))
	stop := run(t, m)

	pub := publisher{t, js}
	want := expected{}
	const n, dups = 2000, 300
	for i := range n {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		want.add(ev)
	}
	// The same requests again under other message ids, as after an
	// outbox replay beyond the duplicate window: the stream keeps them.
	for i := range dups {
		ev := event(i * 3)
		pub.event(ev, ev.RequestID+"-replay")
	}
	pub.wait()
	waitExact(t, js, store, want)
	// The lag is refreshed every LagInterval: it reaches 0 at the first
	// refresh after the last ack.
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(m.m.lag) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("lag = %v after draining", testutil.ToFloat64(m.m.lag))
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := testutil.ToFloat64(m.m.applied); got != n {
		t.Fatalf("applied = %v, want %d", got, n)
	}
	if got := testutil.ToFloat64(m.m.duplicate); got != dups {
		t.Fatalf("duplicates = %v, want %d", got, dups)
	}
	// Reservations are released: 50 per request applied once.
	for k := range want {
		if r, _ := store.Reserved(context.Background(), k); r != 0 {
			t.Fatalf("key %s: reserved %d after release", k, r)
		}
	}
}

func TestTwoMetersConcurrentlyExact(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := openStore(t)
	reg := prometheus.NewRegistry()
	o := testOptions(reg)
	o.BatchSize = 64
	m1, m2 := newMeter(t, js, store, o), newMeter(t, js, store, o)
	run(t, m1)
	run(t, m2)

	pub := publisher{t, js}
	want := expected{}
	const n = 3000
	for i := range n {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		want.add(ev)
		if i%500 == 0 {
			pub.wait()
		}
	}
	for i := range 200 {
		ev := event(i * 7)
		pub.event(ev, ev.RequestID+"-replay")
	}
	pub.wait()
	waitExact(t, js, store, want)
	// The two meters share their series on one registry.
	if got := testutil.ToFloat64(m1.m.applied); got != n {
		t.Fatalf("applied = %v, want %d", got, n)
	}
}

func TestMeterRestartMidRunExact(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := openStore(t)
	pub := publisher{t, js}
	want := expected{}
	const n = 4000
	for i := range n {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		want.add(ev)
	}
	pub.wait()

	o := testOptions(nil)
	o.BatchSize = 32
	first := newMeter(t, js, store, o)
	stop := run(t, first)
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(first.m.applied) < n/4 {
		if time.Now().After(deadline) {
			t.Fatal("first meter applied too little")
		}
		time.Sleep(time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	applied := testutil.ToFloat64(first.m.applied)
	if applied >= n {
		t.Skipf("first meter finished (%v events) before it was cancelled", applied)
	}

	second := newMeter(t, js, store, o)
	run(t, second)
	waitExact(t, js, store, want)
	total := applied + testutil.ToFloat64(second.m.applied)
	if total != n {
		t.Fatalf("applied %v + %v = %v, want %d", applied, testutil.ToFloat64(second.m.applied), total, n)
	}
}

func TestPoisonTerminatedAndCounted(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := openStore(t)
	m := newMeter(t, js, store, testOptions(nil))
	run(t, m)

	pub := publisher{t, js}
	want := expected{}
	for i := range 10 {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		want.add(ev)
		if i == 4 {
			pub.raw(events.Subject("key1"), "bad-json", []byte(`{"request_id": "x", "usage": `))
			noID := event(1000)
			noID.RequestID = ""
			pub.event(noID, "no-request-id")
			noTime := event(1001)
			noTime.Timestamp = time.Time{}
			pub.event(noTime, "zero-time")
		}
	}
	pub.wait()
	waitExact(t, js, store, want)
	if got := testutil.ToFloat64(m.m.poison); got != 3 {
		t.Fatalf("poison = %v, want 3", got)
	}
}

// flakyStore fails its first Apply calls.
type flakyStore struct {
	ledger.Store
	failures atomic.Int64
}

func (s *flakyStore) Apply(ctx context.Context, entries []ledger.Entry) (int, error) {
	if s.failures.Add(-1) >= 0 {
		return 0, errors.New("store unavailable")
	}
	return s.Store.Apply(ctx, entries)
}

func TestApplyErrorRedeliversWithoutLoss(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := &flakyStore{Store: openStore(t)}
	store.failures.Store(3)
	m := newMeter(t, js, store, testOptions(nil))
	run(t, m)

	pub := publisher{t, js}
	want := expected{}
	for i := range 500 {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		want.add(ev)
	}
	pub.wait()
	waitExact(t, js, store, want)
	if got := testutil.ToFloat64(m.m.applyErrors); got != 3 {
		t.Fatalf("apply errors = %v, want 3", got)
	}
}

// closingStore is a store whose first Applies meet it closed, as when the
// process stops under a batch.
type closingStore struct {
	ledger.Store
	closed atomic.Int64
}

func (s *closingStore) Apply(ctx context.Context, entries []ledger.Entry) (int, error) {
	if s.closed.Add(-1) >= 0 {
		return 0, fmt.Errorf("apply: %w", ledger.ErrClosed)
	}
	return s.Store.Apply(ctx, entries)
}

// TestClosedStoreIsNoFailure: a batch that meets the store closed (the
// process stopping) is delivered again without an ERROR line or an apply
// error counted, which read as a damaged ledger at a start that failed for
// another reason.
func TestClosedStoreIsNoFailure(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := &closingStore{Store: openStore(t)}
	store.closed.Store(2)
	o, logs := debugOptions()
	m := newMeter(t, js, store, o)
	run(t, m)
	pub := publisher{t, js}
	want := expected{}
	for i := range 50 {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		want.add(ev)
	}
	pub.wait()
	waitExact(t, js, store, want)
	if got := testutil.ToFloat64(m.m.applyErrors); got != 0 || strings.Contains(logs.String(), "ledger write failed") {
		t.Fatalf("apply errors = %v, log:\n%s", got, logs.String())
	}
}

// logBuffer is an io.Writer for a test logger, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits until the log holds want.
func waitLog(t testing.TB, l *logBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(l.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log has no %q:\n%s", want, l.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// debugOptions are the test options with a log, at debug level, that is
// returned.
func debugOptions() (Options, *logBuffer) {
	logs := &logBuffer{}
	o := testOptions(nil)
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return o, logs
}

// publishApplied publishes event n, adds it to want and waits until the
// store holds exactly want; more than 10 s is an error.
func publishApplied(t *testing.T, pub publisher, js jetstream.JetStream, store ledger.Store, want expected, n int) {
	t.Helper()
	ev := event(n)
	pub.event(ev, ev.RequestID)
	want.add(ev)
	pub.wait()
	start := time.Now()
	waitExact(t, js, store, want)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("event %d applied %s after it was published", n, d)
	}
}

// TestMeterResumesAfterTheStreamIsRecreated: when the consumer and the
// stream vanish (a NATS server that restarted with an empty store), the
// meter waits for the stream, creates its consumer again and applies the
// next event, without a restart.
func TestMeterResumesAfterTheStreamIsRecreated(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := openStore(t)
	o, logs := debugOptions()
	run(t, newMeter(t, js, store, o))
	pub := publisher{t, js}
	want := expected{}
	publishApplied(t, pub, js, store, want, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, events.StreamName, DefaultDurable); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatal(err)
	}
	// The meter notices while the stream is still missing.
	waitLog(t, logs, "stream not found")
	eventstest.EnsureStreams(t, js)
	publishApplied(t, pub, js, store, want, 2)
	// Deleting the consumer, then the stream, is two losses; the attempts
	// while the stream was missing are no warnings.
	if w, gone := strings.Count(logs.String(), "level=WARN"), strings.Count(logs.String(), `msg="meter: consumer is gone`); w != gone || gone > 2 {
		t.Errorf("%d warnings, %d of them for a lost consumer; want only those, at most 2:\n%s", w, gone, logs.String())
	}
}

// TestMeterResumesAfterAnEmptyRestart: after the NATS server restarted with
// an empty store, once the stream exists again, the meter creates its
// consumer again and applies the next event, without a restart. Nothing
// tells the client that the consumer is gone: its pull requests go
// unanswered, and it finds out at the first missed heartbeat.
func TestMeterResumesAfterAnEmptyRestart(t *testing.T) {
	srv, js := eventstest.Start(t)
	store := openStore(t)
	o, logs := debugOptions()
	stop := run(t, newMeter(t, js, store, o))
	pub := publisher{t, js}
	want := expected{}
	publishApplied(t, pub, js, store, want, 1)

	eventstest.RestartEmpty(t, srv)
	waitLog(t, logs, "stream not found")
	eventstest.EnsureStreams(t, js)
	publishApplied(t, pub, js, store, want, 2)
	// Stop before the restarted server's cleanup shuts it down.
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// downStore is a ledger whose every write fails, as Redis down does.
type downStore struct{ ledger.Store }

func (downStore) Apply(context.Context, []ledger.Entry) (int, error) {
	return 0, errors.New("store unavailable")
}

// lagRecorder is llmproxy_meter_lag registered ahead of the meter, so that
// the meter shares it; it hands on every value the meter sets.
type lagRecorder struct {
	prometheus.Gauge
	sets chan float64
}

func (g *lagRecorder) Set(v float64) {
	g.Gauge.Set(v)
	select {
	case g.sets <- v:
	default:
	}
}

// TestLagCountsEventsWaitingForALedgerThatIsDown: events the meter has
// fetched and could not apply (nak'ed, waiting for redelivery) are lag as
// much as events not yet fetched: with the ledger down, llmproxy_meter_lag
// says how many events wait, instead of 0 once the meter has them all.
func TestLagCountsEventsWaitingForALedgerThatIsDown(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	base, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	lag := &lagRecorder{Gauge: base.lag, sets: make(chan float64, 1)}
	reg := prometheus.NewRegistry()
	reg.MustRegister(lag)
	m := newMeter(t, js, downStore{openStore(t)}, testOptions(reg))
	run(t, m)

	pub := publisher{t, js}
	const n = 20
	for i := range n {
		ev := event(i)
		pub.event(ev, ev.RequestID)
	}
	pub.wait()
	// Wait until the meter has fetched every event and failed to apply
	// them: none is left undelivered, all are waiting for an ack.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := js.Consumer(ctx, events.StreamName, DefaultDurable)
		cancel()
		if err == nil && c.CachedInfo().NumPending == 0 && c.CachedInfo().NumAckPending == n && testutil.ToFloat64(m.m.applyErrors) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the meter did not fetch every event")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The third value set from here on was read after every event was
	// fetched: the first may be older, the second's read may have been
	// under way.
	for i := range 3 {
		select {
		case v := <-lag.sets:
			if i == 2 && v != n {
				t.Fatalf("llmproxy_meter_lag = %v with %d events waiting for the ledger, want %d", v, n, n)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("llmproxy_meter_lag not refreshed")
		}
	}
}

// TestCountBeyondTheBoundIsPoison: an event whose counts exceed
// events.MaxTokenCount (a backend's bogus usage) is terminated as poison
// with its reason, and the events around it, in the same batches, are
// applied exactly: on the local store and on Redis, which would otherwise
// round such counts or fail the whole batch on every redelivery.
func TestCountBeyondTheBoundIsPoison(t *testing.T) {
	stores := map[string]func(t *testing.T) ledger.Store{
		"local": func(t *testing.T) ledger.Store { return openStore(t) },
		"redis": func(t *testing.T) ledger.Store {
			rdb, prefix := testRedis(t)
			return ledger.NewRedis(rdb, prefix)
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			js := eventstest.Connect(t, eventstest.Server(t, -1))
			store := open(t)
			o, logs := debugOptions()
			m := newMeter(t, js, store, o)
			pub := publisher{t, js}
			want := expected{}
			bad := 0
			for i := range 40 {
				ev := event(i)
				switch i % 10 {
				case 3:
					ev.Usage.PromptTokens = 1e17
				case 6:
					ev.Usage.CompletionTokens = 1<<62 + 1
				case 9:
					ev.Usage.PromptTokens = events.MaxTokenCount + 1
				default:
					pub.event(ev, ev.RequestID)
					want.add(ev)
					continue
				}
				ev.Usage.TotalTokens = ev.Usage.PromptTokens + ev.Usage.CompletionTokens
				pub.event(ev, ev.RequestID)
				bad++
			}
			// Published before the meter runs: bad and good events share
			// batches.
			pub.wait()
			run(t, m)
			waitExact(t, js, store, want)
			if got := testutil.ToFloat64(m.m.poison); got != float64(bad) {
				t.Fatalf("poison = %v, want %d", got, bad)
			}
			waitLog(t, logs, "out of range 0..2147483647")
		})
	}
}

// TestReadySaysABatchWasNotApplied: while the store fails every batch the
// meter is not ready, saying why; once a batch is applied it is again.
func TestReadySaysABatchWasNotApplied(t *testing.T) {
	js := eventstest.Connect(t, eventstest.Server(t, -1))
	store := &flakyStore{Store: openStore(t)}
	store.failures.Store(1 << 30)
	m := newMeter(t, js, store, testOptions(nil))
	if err := m.Ready(); err != nil {
		t.Fatalf("Ready before any batch = %v", err)
	}
	run(t, m)

	pub := publisher{t, js}
	want := expected{}
	ev := event(1)
	pub.event(ev, ev.RequestID)
	want.add(ev)
	pub.wait()
	deadline := time.Now().Add(10 * time.Second)
	for m.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("Ready stayed nil while the store failed every batch")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := m.Ready(); !strings.Contains(err.Error(), "store unavailable") {
		t.Fatalf("Ready = %v, want the store's error", err)
	}
	store.failures.Store(0)
	waitExact(t, js, store, want)
	// The store has the batch a moment before Apply returns to the meter.
	for deadline := time.Now().Add(5 * time.Second); m.Ready() != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Ready after the batch was applied = %v", m.Ready())
		}
	}
}
