package recorder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Table is the request-log table. It lives in the first schema of the
// connection's search_path.
const Table = "llmproxy_requests"

// SchemaVersion is the version of the request-log schema this package
// writes; Migrate records it in llmproxy_schema_version.
const SchemaVersion = 2

// columns are the table's columns in the order rows are copied.
var columns = []string{
	"request_id", "ts", "key_id", "key_name", "user_id", "model", "endpoint",
	"status_code", "is_stream", "prompt_tokens", "completion_tokens", "total_tokens",
	"usage_source", "latency_ms", "ttft_ms", "backend_url", "client_ip", "error",
	"finish_reason", "tags", "request_body", "response", "event",
}

var columnList = strings.Join(columns, ", ")

// migration creates the schema. Every statement is idempotent. A table
// created beforehand by an operator (for instance partitioned by day, see
// the README) is kept as it is.
var migration = []string{
	`CREATE TABLE IF NOT EXISTS llmproxy_schema_version (
		component  text PRIMARY KEY,
		version    int NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`,
	`CREATE TABLE IF NOT EXISTS ` + Table + ` (
		request_id        text PRIMARY KEY,
		ts                timestamptz NOT NULL,
		key_id            text NOT NULL DEFAULT '',
		key_name          text NOT NULL DEFAULT '',
		user_id           text NOT NULL DEFAULT '',
		model             text NOT NULL DEFAULT '',
		endpoint          text NOT NULL DEFAULT '',
		status_code       int NOT NULL DEFAULT 0,
		is_stream         bool NOT NULL DEFAULT false,
		prompt_tokens     bigint NOT NULL DEFAULT 0,
		completion_tokens bigint NOT NULL DEFAULT 0,
		total_tokens      bigint NOT NULL DEFAULT 0,
		usage_source      text NOT NULL DEFAULT '',
		latency_ms        bigint NOT NULL DEFAULT 0,
		ttft_ms           bigint NOT NULL DEFAULT 0,
		backend_url       text NOT NULL DEFAULT '',
		client_ip         text NOT NULL DEFAULT '',
		error             text NOT NULL DEFAULT '',
		finish_reason     text NOT NULL DEFAULT '',
		tags              jsonb,
		request_body      jsonb,
		response          jsonb,
		event             jsonb NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS llmproxy_requests_key_ts ON ` + Table + ` (key_id, ts)`,
	`CREATE INDEX IF NOT EXISTS llmproxy_requests_ts ON ` + Table + ` (ts)`,
	`CREATE INDEX IF NOT EXISTS llmproxy_requests_user_ts ON ` + Table + ` (user_id, ts)`,
	// Version 2: `llmproxy logs --client-request-id` looks requests up by
	// the X-Request-Id their client sent. Partial: most clients send none.
	`CREATE INDEX IF NOT EXISTS llmproxy_requests_client_id ON ` + Table + ` ((event->>'client_request_id'))
		WHERE event ? 'client_request_id'`,
}

// migrateLock serialises Migrate across recorder replicas starting at once:
// concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
const migrateLock = 0x6c6c6d7072 // "llmpr"

// Migrate creates the request-log table and its indexes when they are
// missing and records SchemaVersion. It is idempotent and safe to run from
// every recorder at start.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	for _, stmt := range migration {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO llmproxy_schema_version (component, version) VALUES ('recorder', $1)
		ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
		WHERE llmproxy_schema_version.version < EXCLUDED.version`, SchemaVersion); err != nil {
		return fmt.Errorf("migrate: schema version: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// ErrMissingColumns is the error of CheckTable for a table that lacks a
// column the recorder writes (errors.Is), rather than a check that failed.
var ErrMissingColumns = errors.New("missing columns")

// CheckTable reports a request-log table that lacks a column the recorder
// writes (one an operator made beforehand, or altered since;
// ErrMissingColumns): every batch would fail on it, so the recorder does
// not start writing until it has them.
func CheckTable(ctx context.Context, pool *pgxpool.Pool) error {
	rows, err := pool.Query(ctx, `SELECT attname FROM pg_attribute
		WHERE attrelid = '`+Table+`'::regclass AND attnum > 0 AND NOT attisdropped`)
	if err != nil {
		return fmt.Errorf("check table %s: %w", Table, err)
	}
	has := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("check table %s: %w", Table, err)
		}
		has[name] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check table %s: %w", Table, err)
	}
	var missing []string
	for _, c := range columns {
		if !has[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return &missingColumnsError{fmt.Sprintf("table %s lacks the recorder's columns %s: add them as the README's layout has them",
			Table, strings.Join(missing, ", "))}
	}
	return nil
}

type missingColumnsError struct{ msg string }

func (e *missingColumnsError) Error() string        { return e.msg }
func (e *missingColumnsError) Is(target error) bool { return target == ErrMissingColumns }

// CheckURL reports whether url is one OpenPool can parse, without
// connecting; its error never quotes the URL, which may hold a password.
func CheckURL(url string) error {
	if _, err := pgxpool.ParseConfig(url); err != nil {
		return errors.New("not a valid PostgreSQL URL")
	}
	return nil
}

// connectTimeout bounds a connection to PostgreSQL when the URL gives no
// connect_timeout of its own.
var connectTimeout = 10 * time.Second

// OpenPool connects to the PostgreSQL at url (a postgres:// URL or a
// key=value DSN) and checks that it answers. The caller closes the pool.
func OpenPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The error of ParseConfig may quote the URL, password included.
		return nil, errors.New("logging.postgres.url: not a valid PostgreSQL URL")
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "llmproxy"
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// A server that takes the connection and says nothing (stopped,
		// behind a stalled proxy) must fail the connect, not hold it.
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return pool, nil
}
