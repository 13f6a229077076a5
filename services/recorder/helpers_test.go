package recorder

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

const defaultPGURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// startPostgres returns a pool whose search_path is a new, empty schema
// that is dropped at cleanup, so tests never see each other's rows. It
// skips the test when PostgreSQL is unreachable, and fails it under CI.
func startPostgres(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := startPostgresSchema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return pool
}

// startPostgresSchema is startPostgres without the migration.
func startPostgresSchema(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := os.Getenv("PG_URL")
	if url == "" {
		url = defaultPGURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s is required under CI: %v", url, err)
		}
		t.Skipf("PostgreSQL at %s unreachable (set PG_URL): %v", url, err)
	}
	defer admin.Close(ctx)
	schema := fmt.Sprintf("rec_%s_%d", strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name())), time.Now().UnixNano()%1e9)
	if len(schema) > 60 {
		schema = schema[len(schema)-60:]
		schema = "r" + schema
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, url); err == nil {
			_, _ = c.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
			_ = c.Close(ctx)
		}
	})
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func testOptions() Options {
	return Options{
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		BatchSize:    50,
		BatchWait:    20 * time.Millisecond,
		AckWait:      3 * time.Second,
		WriteTimeout: 2 * time.Second,
		RetryWait:    50 * time.Millisecond,
	}
}

// event returns a filled-in event.
func event(id, key string, status int) *events.RequestCompleted {
	return &events.RequestCompleted{
		RequestID:   id,
		UserID:      "user_alice",
		APIKey:      "sk-llmproxy-…t123",
		RequestBody: []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`),
		Usage:       events.Usage{PromptTokens: 15, CompletionTokens: 42, TotalTokens: 57},
		Endpoint:    "/v1/chat/completions",
		Timestamp:   time.Now().UTC().Truncate(time.Microsecond),
		StatusCode:  status,
		KeyID:       key,
		KeyName:     "team " + key,
		Model:       "m",
		UsageSource: events.UsageSourceBackend,
		LatencyMS:   120,
		Tags:        map[string]string{"team": "a"},
		Response:    &events.CapturedResponse{Content: "hello", Truncated: false},
	}
}

func publishEvent(t testing.TB, js jetstream.JetStream, e *events.RequestCompleted, msgID string) {
	t.Helper()
	body, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, events.Subject(e.KeyID), body, jetstream.WithMsgID(msgID)); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// publishN publishes n events with ids prefix-0000… and returns the ids.
func publishN(t testing.TB, js jetstream.JetStream, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%04d", prefix, i)
		publishEvent(t, js, event(ids[i], "key1", 200), ids[i])
	}
	return ids
}

// runRecorder starts r and returns a function that stops it and returns
// Run's error; the stop also runs at cleanup.
func runRecorder(t testing.TB, r *Recorder) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = fmt.Errorf("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// rowCounts returns the number of rows and of distinct request ids.
func rowCounts(t testing.TB, pool *pgxpool.Pool) (rows, distinct int) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT request_id) FROM `+Table).Scan(&rows, &distinct)
	if err != nil {
		t.Fatalf("count rows: %v", err)
	}
	return rows, distinct
}

// waitRows waits until the table holds want rows.
func waitRows(t testing.TB, pool *pgxpool.Pool, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, _ := rowCounts(t, pool)
		if n == want {
			return
		}
		if n > want || time.Now().After(deadline) {
			t.Fatalf("table holds %d rows, want %d", n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wipeStream deletes the durable consumer and the LLMPROXY stream, as a
// NATS server that restarted with an empty store has lost them.
func wipeStream(t testing.TB, js jetstream.JetStream, durable string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, events.StreamName, durable); err != nil {
		t.Fatalf("delete consumer: %v", err)
	}
	if err := js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
}

// logBuffer is an io.Writer for a test logger that is safe for concurrent
// use.
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

// debugRecorder is a recorder of the test options whose log, at debug
// level, is returned.
func debugRecorder(t *testing.T, js jetstream.JetStream, pool *pgxpool.Pool) (*Recorder, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	opts := testOptions()
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rec, err := New(js, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	return rec, logs
}
