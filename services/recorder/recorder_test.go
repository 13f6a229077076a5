package recorder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
)

func TestMigrateIsIdempotent(t *testing.T) {
	pool := startPostgres(t)
	ctx := context.Background()
	for range 2 {
		if err := Migrate(ctx, pool); err != nil {
			t.Fatalf("Migrate again: %v", err)
		}
	}
	var v int
	if err := pool.QueryRow(ctx, `SELECT version FROM llmproxy_schema_version WHERE component = 'recorder'`).Scan(&v); err != nil || v != SchemaVersion {
		t.Fatalf("schema version = %d, %v; want %d", v, err, SchemaVersion)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND schemaname = current_schema()`, Table).Scan(&n); err != nil || n != 5 {
		t.Fatalf("indexes = %d, %v; want 5 (primary key and four)", n, err)
	}

	// A lookup by client request id can use its partial index.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	rows, err := conn.Query(ctx, "EXPLAIN SELECT request_id FROM "+Table+" WHERE "+fmt.Sprintf(clientIDCond, 1), "retry-7")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(line + "\n")
	}
	if rows.Err() != nil || !strings.Contains(plan.String(), "llmproxy_requests_client_id") {
		t.Fatalf("the client request id lookup does not use its index (%v):\n%s", rows.Err(), plan.String())
	}
}

func TestRecordsEventsAndQueryReturnsThemWhole(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	rec, err := New(js, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := event("req-whole", "key1", 200)
	want.IsStream, want.TTFTMS, want.FinishReason, want.ClientIP = true, 35, "stop", "10.0.0.1"
	want.BackendURL, want.Reservation, want.QuotaPeriod = "http://vllm:8000", 300, "daily"
	want.Response = &events.CapturedResponse{Content: "Hello there", Truncated: true}
	publishEvent(t, js, want, want.RequestID)
	// NUL characters are legal in JSON and in Go strings but not in
	// PostgreSQL text or jsonb: they are stored as U+FFFD instead of
	// poisoning the event.
	nul := event("req-nul", "key1", 502)
	nul.RequestBody = []byte(`{"content":"a\u0000b","lit":"\\u0000"}`)
	nul.Error = "bad\x00byte"
	nul.Response = nil
	publishEvent(t, js, nul, nul.RequestID)
	runRecorder(t, rec)
	waitRows(t, pool, 2)

	got, err := Query(context.Background(), pool, Filter{RequestID: want.RequestID})
	if err != nil || len(got) != 1 {
		t.Fatalf("Query = %d events, %v", len(got), err)
	}
	want.Schema = events.SchemaRequestCompletedV1
	g := got[0]
	if !jsonEqual(t, g.RequestBody, want.RequestBody) {
		t.Errorf("request_body = %s, want %s", g.RequestBody, want.RequestBody)
	}
	g.RequestBody, want.RequestBody = nil, nil
	g.Timestamp, want.Timestamp = g.Timestamp.UTC(), want.Timestamp.UTC()
	if !reflect.DeepEqual(g, *want) {
		t.Errorf("Query returned\n%+v\nwant\n%+v", g, *want)
	}

	got, err = Query(context.Background(), pool, Filter{RequestID: "req-nul"})
	if err != nil || len(got) != 1 {
		t.Fatalf("Query nul = %d events, %v", len(got), err)
	}
	if got[0].Error != "bad\uFFFDbyte" || !jsonEqual(t, got[0].RequestBody, []byte(`{"content":"a\ufffdb","lit":"\\u0000"}`)) || got[0].Response != nil {
		t.Errorf("NUL event stored as error=%q body=%s response=%v", got[0].Error, got[0].RequestBody, got[0].Response)
	}
	if n := testutil.ToFloat64(rec.metrics.written); n != 2 {
		t.Errorf("events written = %v, want 2", n)
	}
	if n := testutil.CollectAndCount(reg, "llmproxy_recorder_batch_seconds"); n != 1 {
		t.Errorf("batch histogram not exported")
	}
}

func jsonEqual(t testing.TB, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

// TestSameRequestUnderTwoMessageIDsIsOneRow: the server's duplicate window
// catches a repeated message id, but not a request published again under
// another id (an outbox replay after the window, a republish by hand).
func TestSameRequestUnderTwoMessageIDsIsOneRow(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	e := event("req-twice", "key1", 200)
	publishEvent(t, js, e, "msg-a")
	publishEvent(t, js, e, "msg-b") // same batch
	stop := runRecorder(t, rec)
	waitRows(t, pool, 1)
	publishEvent(t, js, e, "msg-c") // a later batch
	publishEvent(t, js, event("req-other", "key1", 200), "req-other")
	waitRows(t, pool, 2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if rows, distinct := rowCounts(t, pool); rows != 2 || distinct != 2 {
		t.Fatalf("rows=%d distinct=%d, want 2 and 2", rows, distinct)
	}
	assertAllAcked(t, js)
}

// assertAllAcked checks that the durable consumer has nothing pending or
// unacknowledged: every event was settled.
func assertAllAcked(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := js.Consumer(ctx, events.StreamName, DefaultDurable)
		if err != nil {
			t.Fatalf("consumer: %v", err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer still has %d pending and %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRestartMidBatchWritesEveryEventOnce stops a recorder between a
// batch's commit and its acks, and in the middle of the stream, and checks
// that a second recorder leaves every event in the table exactly once.
func TestRestartMidBatchWritesEveryEventOnce(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	const n = 600
	ids := publishN(t, js, "req", n)

	first, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	var commits atomic.Int32
	died := make(chan struct{})
	first.afterCommit = func() bool {
		if commits.Add(1) == 3 {
			close(died)
		}
		// From the third commit on, the process is "dead": its batches
		// are in the table but never acknowledged.
		return commits.Load() < 3
	}
	stop := runRecorder(t, first)
	<-died
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	written, _ := rowCounts(t, pool)
	if written == 0 || written >= n {
		t.Fatalf("first recorder wrote %d of %d events; the test needs it stopped midway", written, n)
	}

	more := publishN(t, js, "late", 100)
	second, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	runRecorder(t, second)
	waitRows(t, pool, n+len(more))
	assertAllAcked(t, js)
	rows, distinct := rowCounts(t, pool)
	if rows != n+len(more) || distinct != rows {
		t.Fatalf("rows=%d distinct=%d, want %d", rows, distinct, n+len(more))
	}
	got, err := Query(context.Background(), pool, Filter{RequestID: ids[n-1]})
	if err != nil || len(got) != 1 {
		t.Fatalf("Query last = %v, %v", got, err)
	}
}

func TestPoisonEventsAreTerminated(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.Publish(ctx, events.Subject("key1"), []byte("not json"), jetstream.WithMsgID("bad-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, events.Subject("key1"), []byte(`{"schema":"x","status_code":200}`), jetstream.WithMsgID("bad-2")); err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("good", "key1", 200), "good")
	runRecorder(t, rec)
	waitRows(t, pool, 1)
	assertAllAcked(t, js)
	if n := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errPoison)); n != 2 {
		t.Fatalf("poison errors = %v, want 2", n)
	}
}

func TestQueryFilters(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	old := event("old", "key1", 200)
	old.Timestamp = time.Now().Add(-3 * time.Hour).UTC()
	old.ClientRequestID = "retry-7"
	publishEvent(t, js, old, "old")
	for i, e := range []*events.RequestCompleted{
		event("a", "key1", 200), event("b", "key2", 429), event("c", "key1", 500), event("d", "key1", 200),
	} {
		e.Timestamp = e.Timestamp.Add(time.Duration(i) * time.Millisecond)
		if e.RequestID == "c" {
			e.ClientRequestID = "retry-7" // a client that reused its id
		}
		publishEvent(t, js, e, e.RequestID)
	}
	runRecorder(t, rec)
	waitRows(t, pool, 5)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"default window", Filter{}, []string{"a", "b", "c", "d"}},
		{"key", Filter{KeyID: "key1"}, []string{"a", "c", "d"}},
		{"status", Filter{Status: 429}, []string{"b"}},
		{"limit keeps the newest", Filter{Limit: 2}, []string{"c", "d"}},
		{"since", Filter{Since: time.Now().Add(-4 * time.Hour)}, []string{"old", "a", "b", "c", "d"}},
		{"request id ignores the window", Filter{RequestID: "old"}, []string{"old"}},
		{"client request id ignores the window", Filter{ClientRequestID: "retry-7"}, []string{"old", "c"}},
		{"client request id and status", Filter{ClientRequestID: "retry-7", Status: 500}, []string{"c"}},
		{"client request id is not the gateway's", Filter{ClientRequestID: "a"}, nil},
		{"nothing", Filter{KeyID: "nobody"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Query(ctx, pool, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if ids := requestIDs(got); !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("got %v, want %v", ids, tt.want)
			}
		})
	}
}

func requestIDs(list []events.RequestCompleted) []string {
	var out []string
	for _, e := range list {
		out = append(out, e.RequestID)
	}
	return out
}

// TestPartitionedTable runs the recorder on the day-partitioned layout the
// README documents: the migration keeps it, duplicates still give one row.
func TestPartitionedTable(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgresSchema(t)
	ddl, err := os.ReadFile("testdata/partitioned.sql")
	if err != nil {
		t.Fatal(err)
	}
	day := time.Now().UTC().Truncate(24 * time.Hour)
	sql := strings.NewReplacer("__FROM__", day.Format(time.RFC3339), "__TO__", day.Add(24*time.Hour).Format(time.RFC3339)).Replace(string(ddl))
	ctx := context.Background()
	if _, err := pool.Exec(ctx, sql); err != nil {
		t.Fatalf("create partitioned table: %v", err)
	}
	if err := Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate on a partitioned table: %v", err)
	}
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	e := event("part-1", "key1", 200)
	publishEvent(t, js, e, "m1")
	publishEvent(t, js, e, "m2")
	old := event("part-old", "key1", 200)
	old.Timestamp = day.Add(-72 * time.Hour)
	publishEvent(t, js, old, "m3")
	stop := runRecorder(t, rec)
	waitRows(t, pool, 2)
	publishEvent(t, js, e, "m4")
	publishEvent(t, js, event("part-2", "key1", 200), "m5")
	waitRows(t, pool, 3)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	assertAllAcked(t, js)
	var today, other int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM llmproxy_requests_today), (SELECT count(*) FROM llmproxy_requests_default)`).Scan(&today, &other); err != nil {
		t.Fatal(err)
	}
	if today != 2 || other != 1 {
		t.Fatalf("rows today=%d default=%d, want 2 and 1", today, other)
	}
}

// TestBodiesPostgreSQLRefusesAreStoredAsText checks that a request body
// jsonb refuses (a lone surrogate escape, a number out of numeric's range)
// neither keeps the request out of the log nor loses its metadata.
func TestBodiesPostgreSQLRefusesAreStoredAsText(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string]string{
		"surrogate": `{"model":"m","messages":[{"role":"user","content":"hi \ud800 there"}]}`,
		"overflow":  `{"model":"m","temperature":1e1000000}`,
	}
	for id, body := range bodies {
		e := event(id, "key1", 200)
		e.RequestBody = json.RawMessage(body)
		publishEvent(t, js, e, id)
	}
	publishEvent(t, js, event("good", "key1", 200), "good")
	runRecorder(t, rec)
	waitRows(t, pool, 3)
	assertAllAcked(t, js)
	if n := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errPoison)); n != 0 {
		t.Fatalf("poison errors = %v, want 0", n)
	}
	got, err := Query(context.Background(), pool, Filter{KeyID: "key1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Query returned %d events, want 3", len(got))
	}
	for _, e := range got {
		want, ok := bodies[e.RequestID]
		if !ok {
			continue
		}
		var text string
		if err := json.Unmarshal(e.RequestBody, &text); err != nil || text != want {
			t.Errorf("%s: request_body = %s, want the text %s as a JSON string (%v)", e.RequestID, e.RequestBody, want, err)
		}
		if e.Model != "m" || e.Usage.TotalTokens != 57 || e.StatusCode != 200 || e.Tags["team"] != "a" {
			t.Errorf("%s: metadata lost: %+v", e.RequestID, e)
		}
		if e.Response == nil || e.Response.Content != "hello" {
			t.Errorf("%s: response = %+v, want content hello", e.RequestID, e.Response)
		}
	}
}

// TestResumesAfterTheStreamIsRecreated: when the consumer and the stream
// vanish (a NATS server that restarted with an empty store), the recorder
// waits for the stream, creates its consumer again and records the next
// event, without a restart.
func TestResumesAfterTheStreamIsRecreated(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	rec, logs := debugRecorder(t, js, pool)
	publishEvent(t, js, event("before", "key1", 200), "before")
	runRecorder(t, rec)
	waitRows(t, pool, 1)

	wipeStream(t, js, DefaultDurable)
	// The recorder notices while the stream is still missing.
	waitLog(t, logs, "consumer is gone")
	waitLog(t, logs, "create consumer again")
	eventstest.EnsureStreams(t, js)
	start := time.Now()
	publishEvent(t, js, event("after", "key1", 200), "after")
	waitRows(t, pool, 2)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("event recorded %s after the stream came back", d)
	}
	// Deleting the consumer, then the stream, is two losses; the attempts
	// while the stream was missing are no warnings.
	if w, gone := strings.Count(logs.String(), "level=WARN"), strings.Count(logs.String(), "consumer is gone"); w != gone || gone > 2 {
		t.Errorf("%d warnings, %d of them for a lost consumer; want only those, at most 2:\n%s", w, gone, logs.String())
	}
	assertAllAcked(t, js)
}

// TestResumesAfterAnEmptyRestart: after the NATS server restarted with an
// empty store, once the stream exists again, the recorder creates its
// consumer again and records the next event, without a restart.
func TestResumesAfterAnEmptyRestart(t *testing.T) {
	srv, js := eventstest.Start(t)
	pool := startPostgres(t)
	rec, logs := debugRecorder(t, js, pool)
	publishEvent(t, js, event("before", "key1", 200), "before")
	stop := runRecorder(t, rec)
	waitRows(t, pool, 1)

	eventstest.RestartEmpty(t, srv)
	waitLog(t, logs, "create consumer again")
	eventstest.EnsureStreams(t, js)
	start := time.Now()
	publishEvent(t, js, event("after", "key1", 200), "after")
	waitRows(t, pool, 2)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("event recorded %s after the stream came back", d)
	}
	assertAllAcked(t, js)
	// Stop before the restarted server's cleanup shuts it down.
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestBatchBoundedByBytes: a batch holds at most BatchBytes of events (never
// less than one event of the server's max_payload), so a backlog of large
// events (long prompts with capture on, after a database outage) is not
// held 500 at a time in memory.
func TestBatchBoundedByBytes(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	opts := testOptions()
	opts.BatchBytes = 1 // below one event: raised to the server's max_payload
	rec, err := New(js, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	var batches atomic.Int32
	rec.afterCommit = func() bool { batches.Add(1); return true }
	big := `{"content":"` + strings.Repeat("x", 300<<10) + `"}`
	const n = 6
	for i := range n {
		e := event(fmt.Sprintf("req-big-%d", i), "key1", 200)
		e.RequestBody = []byte(big)
		publishEvent(t, js, e, e.RequestID)
	}
	runRecorder(t, rec)
	waitRows(t, pool, n)
	if b := batches.Load(); b < 2 {
		t.Errorf("%d events of 300 KiB written in %d batch(es), want at most ~1 MiB (3 events) per batch", n, b)
	}
}

// refuseBlockedFn and refuseBlockedTrigger make the table refuse the rows
// of key "blocked", as a trigger an operator adds would.
const (
	refuseBlockedFn = `CREATE FUNCTION refuse_blocked() RETURNS trigger LANGUAGE plpgsql AS $$
		 BEGIN IF NEW.key_id = 'blocked' THEN RAISE EXCEPTION 'blocked key'; END IF; RETURN NEW; END $$`
	refuseBlockedTrigger = `CREATE TRIGGER refuse_blocked BEFORE INSERT ON ` + Table + ` FOR EACH ROW EXECUTE FUNCTION refuse_blocked()`
)

// untilRefusing waits until r.Refusing reports something, failing the test
// after 10 s, while what.
func untilRefusing(t *testing.T, r *Recorder, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); r.Refusing() == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Refusing = nil while " + what)
		}
	}
}

// failInserts has every insert into the table fail with SQLSTATE code and
// message msg, until the trigger name is dropped.
func failInserts(t *testing.T, pool *pgxpool.Pool, name, code, msg string) {
	t.Helper()
	execAll(t, pool, `CREATE FUNCTION `+name+`() RETURNS trigger LANGUAGE plpgsql AS $$
		 BEGIN RAISE EXCEPTION '`+msg+`' USING ERRCODE = '`+code+`'; END $$`,
		`CREATE TRIGGER `+name+` BEFORE INSERT ON `+Table+` FOR EACH ROW EXECUTE FUNCTION `+name+`()`)
}

// execAll runs stmts on pool, failing the test at the first error.
func execAll(t *testing.T, pool *pgxpool.Pool, stmts ...string) {
	t.Helper()
	for _, stmt := range stmts {
		if _, err := pool.Exec(context.Background(), stmt); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTableRefusalsLoseNothing: rows the table refuses for its own sake (a
// CHECK constraint, a trigger an operator added) are handed back, not
// terminated, while the rest of their batch is stored; Refusing says so;
// once the table takes them, they are stored and Refusing clears.
func TestTableRefusalsLoseNothing(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	execAll(t, pool, `ALTER TABLE `+Table+` ADD CONSTRAINT no_429 CHECK (status_code <> 429)`, refuseBlockedFn, refuseBlockedTrigger)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("ok-1", "key1", 200), "ok-1")
	publishEvent(t, js, event("limited", "key1", 429), "limited")
	publishEvent(t, js, event("from-blocked", "blocked", 200), "from-blocked")
	publishEvent(t, js, event("ok-2", "key2", 200), "ok-2")
	runRecorder(t, rec)
	waitRows(t, pool, 2)
	deadline := time.Now().Add(10 * time.Second)
	for rec.Refusing() == nil {
		if time.Now().After(deadline) {
			t.Fatal("Refusing = nil while the table refuses two events")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := rec.Refusing(); !strings.Contains(err.Error(), "refuses events since") {
		t.Fatalf("Refusing = %v", err)
	}
	if n := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errPoison)); n != 0 {
		t.Fatalf("%v events terminated as poison, want none", n)
	}
	execAll(t, pool, `ALTER TABLE `+Table+` DROP CONSTRAINT no_429`, `DROP TRIGGER refuse_blocked ON `+Table)
	waitRows(t, pool, 4)
	for deadline := time.Now().Add(10 * time.Second); rec.Refusing() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Refusing = %v once the table takes every event", rec.Refusing())
		}
	}
	assertAllAcked(t, js)
}

// TestNarrowedColumnHoldsEvents: a column an operator narrowed (a value of
// the event's that PostgreSQL then refuses, class 22) is the table's fault,
// since the recorder's own layout takes the value: the event is held, not
// terminated, and stored once the column is widened again.
func TestNarrowedColumnHoldsEvents(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `ALTER TABLE `+Table+` ALTER COLUMN key_name TYPE varchar(6)`); err != nil {
		t.Fatal(err)
	}
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("short", "k", 200), "short")        // "team k" fits
	publishEvent(t, js, event("long", "a-long-key", 200), "long") // "team a-long-key" does not
	runRecorder(t, rec)
	waitRows(t, pool, 1)
	untilRefusing(t, rec, "the table refuses an event")
	if n := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errPoison)); n != 0 {
		t.Fatalf("%v events terminated as poison, want none", n)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE `+Table+` ALTER COLUMN key_name TYPE text`); err != nil {
		t.Fatal(err)
	}
	waitRows(t, pool, 2)
}

// TestNarrowedBodyColumnKeepsBodies: a request_body column an operator
// narrowed refuses the body for its own sake: the event is held, bodies and
// all, not stored without them, and stored whole once the column takes it.
func TestNarrowedBodyColumnKeepsBodies(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	execAll(t, pool, `ALTER TABLE `+Table+` ALTER COLUMN request_body TYPE varchar(20) USING left(request_body::text, 20)`)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("bodied", "k", 200), "bodied")
	runRecorder(t, rec)
	untilRefusing(t, rec, "the table refuses an event's body")
	if err := rec.Refusing(); !strings.Contains(err.Error(), "refuses events since") || strings.Contains(err.Error(), "llmproxy_requests_in") {
		t.Fatalf("Refusing = %v, want the table's refusal under the table's name", err)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+Table).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows (%v), want none while the body does not fit", n, err)
	}
	execAll(t, pool, `ALTER TABLE `+Table+` ALTER COLUMN request_body TYPE jsonb USING request_body::jsonb`)
	waitRows(t, pool, 1)
	var model string
	if err := pool.QueryRow(context.Background(), `SELECT request_body->>'model' FROM `+Table).Scan(&model); err != nil || model != "m" {
		t.Fatalf("request_body model %q (%v), want the body whole", model, err)
	}
}

// TestWritesFailingIsNotReady: writes that fail for an outage while the
// pool's connections answer (a statement_timeout, a full disk, statements
// cancelled) make Refusing say so, and the first write that succeeds
// clears it, with a line saying so.
func TestWritesFailingIsNotReady(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	failInserts(t, pool, "disk_full", "53100", "could not extend file")
	opts := testOptions()
	logs := &logBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	rec, err := New(js, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("e1", "k", 200), "e1")
	runRecorder(t, rec)
	untilRefusing(t, rec, "every write fails")
	if err := rec.Refusing(); !strings.Contains(err.Error(), "fail since") || !strings.Contains(err.Error(), "53100") {
		t.Fatalf("Refusing = %v", err)
	}
	execAll(t, pool, `DROP TRIGGER disk_full ON `+Table)
	waitRows(t, pool, 1)
	if err := rec.Refusing(); err != nil {
		t.Fatalf("Refusing = %v once writes succeed", err)
	}
	waitLog(t, logs, "writing to the table again")
}

// TestLockWaitIsAnOutage: a write that failed for a lock not had within
// the session's lock_timeout (an ALTER TABLE holding the table), for a
// deadlock or for a read-only session (a standby) is waited out as an
// outage, the batch handed back whole, not taken for the table refusing
// events.
func TestLockWaitIsAnOutage(t *testing.T) {
	for _, code := range []string{"55P03", "40P01", "25006"} {
		t.Run(code, func(t *testing.T) {
			js, pool := eventstest.JetStream(t), startPostgres(t)
			failInserts(t, pool, "held", code, "waited too long")
			rec, err := New(js, pool, testOptions())
			if err != nil {
				t.Fatal(err)
			}
			publishEvent(t, js, event("e1", "k", 200), "e1")
			runRecorder(t, rec)
			untilRefusing(t, rec, "writes wait for a lock")
			if err := rec.Refusing(); !strings.Contains(err.Error(), "fail since") || !strings.Contains(err.Error(), code) {
				t.Fatalf("Refusing = %v, want writes failing for %s", err, code)
			}
			execAll(t, pool, `DROP TRIGGER held ON `+Table)
			waitRows(t, pool, 1)
		})
	}
}

// TestOutageRenewsSessions: after writes fail for a setting of their
// sessions (a role's statement_timeout, which applies to new sessions only
// once it is reset), the next write starts a new session, so that the fix
// applies without a restart, even over a session opened in between. The trigger fails every session begun before
// the time in fix_at.
func TestOutageRenewsSessions(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	execAll(t, pool, `CREATE TABLE fix_at (t timestamptz)`, `INSERT INTO fix_at VALUES ('infinity')`,
		`CREATE FUNCTION old_session() RETURNS trigger LANGUAGE plpgsql AS $$
		 BEGIN
		   IF (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) < (SELECT t FROM fix_at) THEN
		     RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = '57014';
		   END IF;
		   RETURN NEW;
		 END $$`,
		`CREATE TRIGGER old_session BEFORE INSERT ON `+Table+` FOR EACH ROW EXECUTE FUNCTION old_session()`)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("e1", "k", 200), "e1")
	stop := runRecorder(t, rec)
	untilRefusing(t, rec, "every write fails")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// A session opened on the recorder's pool after the failure and
	// before the fix (a readiness ping does this) has the old setting as
	// well: the write after the fix must not run in it.
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	// The test's own statements go through a connection of their own:
	// ones on the recorder's pool would make it open new sessions.
	own, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close(ctx)
	if _, err := own.Exec(ctx, `UPDATE fix_at SET t = now()`); err != nil {
		t.Fatal(err)
	}
	failed := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errWrite))
	runRecorder(t, rec)
	// Well within the backoff's 2 s doublings: the next write's session is
	// a new one.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var n int
		if err := own.QueryRow(ctx, `SELECT count(*) FROM `+Table).Scan(&n); err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing stored 3 s after the sessions' setting was fixed: %v", rec.Refusing())
		}
	}
	if n := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errWrite)) - failed; n != 0 {
		t.Fatalf("%v writes failed after the fix, want none: the first ran in a session begun before it", n)
	}
}

// TestColumnDroppedWhileRunning: a column the recorder writes, dropped
// while it runs, holds every event, the columns named (as at start), and
// they are stored once it is back.
func TestColumnDroppedWhileRunning(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("before", "k", 200), "before")
	runRecorder(t, rec)
	waitRows(t, pool, 1)
	execAll(t, pool, `ALTER TABLE `+Table+` DROP COLUMN finish_reason`)
	publishEvent(t, js, event("after", "k", 200), "after")
	untilRefusing(t, rec, "a column is missing")
	if err := rec.Refusing(); !strings.Contains(err.Error(), "lacks the recorder's columns finish_reason") {
		t.Fatalf("Refusing = %v, want the missing column named", err)
	}
	execAll(t, pool, `ALTER TABLE `+Table+` ADD COLUMN finish_reason text NOT NULL DEFAULT ''`)
	waitRows(t, pool, 2)
}

// TestStoredByAnotherRecorderClears: an event the table refused, or whose
// write failed for an outage (a full disk), and that another recorder then
// stored no longer counts here: nothing waits on this recorder.
func TestStoredByAnotherRecorderClears(t *testing.T) {
	for _, tc := range []struct {
		name, trigger, key, want string
		make                     func(t *testing.T, pool *pgxpool.Pool)
	}{
		{"refusal", "refuse_blocked", "blocked", "refuses", func(t *testing.T, pool *pgxpool.Pool) {
			execAll(t, pool, refuseBlockedFn, refuseBlockedTrigger)
		}},
		{"outage", "disk_full", "k", "fail since", func(t *testing.T, pool *pgxpool.Pool) {
			failInserts(t, pool, "disk_full", "53100", "could not extend file")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, pool := eventstest.JetStream(t), startPostgres(t)
			tc.make(t, pool)
			a, err := New(js, pool, testOptions())
			if err != nil {
				t.Fatal(err)
			}
			publishEvent(t, js, event("e1", tc.key, 200), "e1")
			stopA := runRecorder(t, a)
			untilRefusing(t, a, "the table refuses or fails the event")
			if err := stopA(); err != nil {
				t.Fatal(err)
			}
			if err := a.Refusing(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Refusing = %v, want %q", err, tc.want)
			}
			execAll(t, pool, `DROP TRIGGER `+tc.trigger+` ON `+Table)
			b, err := New(js, pool, testOptions())
			if err != nil {
				t.Fatal(err)
			}
			runRecorder(t, b)
			waitRows(t, pool, 1)
			assertAllAcked(t, js)
			if err := a.Refusing(); err != nil {
				t.Fatalf("Refusing = %v after another recorder stored the event", err)
			}
		})
	}
}

// TestFailureLinesLimitedByMessage: each kind of failure line has its own
// limit, so a frequent one does not hide another.
func TestFailureLinesLimitedByMessage(t *testing.T) {
	logs := &logBuffer{}
	opts := testOptions()
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	r := &Recorder{opts: opts}
	for range 3 {
		r.logFailure(slog.LevelWarn, "batch refused")
		r.logFailure(slog.LevelError, "event refused", "request_id", "r1")
	}
	out := logs.String()
	if strings.Count(out, "batch refused") != 1 || strings.Count(out, "event refused") != 1 || !strings.Contains(out, "request_id=r1") {
		t.Fatalf("log:\n%s\nwant one line of each", out)
	}
}

// TestRefusedEventsDoNotHoldBackOthers: many events the table refuses
// come back later each time, so the events published after them are
// delivered and stored meanwhile.
func TestRefusedEventsDoNotHoldBackOthers(t *testing.T) {
	js, pool := eventstest.JetStream(t), startPostgres(t)
	execAll(t, pool, refuseBlockedFn, refuseBlockedTrigger)
	rec, err := New(js, pool, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		id := fmt.Sprintf("blocked-%d", i)
		publishEvent(t, js, event(id, "blocked", 200), id)
	}
	runRecorder(t, rec)
	time.Sleep(time.Second) // the refused events go round a few times
	for i := range 5 {
		id := fmt.Sprintf("after-%d", i)
		publishEvent(t, js, event(id, "key1", 200), id)
	}
	waitRows(t, pool, 5)
	// The others stored do not clear the refusal of those still refused.
	if err := rec.Refusing(); err == nil || !strings.Contains(err.Error(), "300 of them now") {
		t.Fatalf("Refusing = %v, want the 300 events still refused", err)
	}
}

// TestOutageIsNoRefusal: the database refusing the connection or session
// is an outage, to wait out, as are a deadlock and a lock not had in time;
// a refusal of the rows is not.
func TestOutageIsNoRefusal(t *testing.T) {
	for code, want := range map[string]bool{"57P03": true, "53300": true, "28P01": true, "3D000": true, "08006": true,
		"40P01": true, "40001": true, "55P03": true, "55000": false, "25006": true, "25P02": false,
		"23514": false, "P0001": false, "42703": false, "22001": false} {
		if got := outage(&pgconn.PgError{Code: code}); got != want {
			t.Errorf("outage(%s) = %v, want %v", code, got, want)
		}
	}
	if !outage(errors.New("dial tcp: connection refused")) {
		t.Error("a connection that failed is no outage")
	}
}
