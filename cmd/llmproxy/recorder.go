package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/recorder"
)

// runRecorder runs the recorder target until ctx is done: it connects to
// logging.postgres.url, creates the request-log table when missing and
// writes every event to it. While PostgreSQL cannot be reached it keeps
// trying, so that a database outage at start does not stop the other
// targets of the process; events wait in the stream meanwhile. pg, when
// not nil, is kept up to date with the pool the recorder writes through.
func runRecorder(ctx context.Context, cfg *config.Config, b *bus, log *slog.Logger, reg prometheus.Registerer, pg *pgReady) error {
	url := cfg.Logging.Postgres.URL
	if url == "" {
		return errors.New("logging.postgres.url is required for the recorder")
	}
	log = log.With("worker", "recorder")
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := startRecorder(ctx, url, b, log, reg, pg)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return err
		}
		pg.failed(err)
		log.Warn("recorder: postgres not ready; retrying", "err", err, "in", wait.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// permanentError is a recorder failure that waiting will not fix.
type permanentError struct{ error }

func startRecorder(ctx context.Context, url string, b *bus, log *slog.Logger, reg prometheus.Registerer, pg *pgReady) error {
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	pool, err := recorder.OpenPool(octx, url)
	if err == nil {
		err = recorder.Migrate(octx, pool)
		if err == nil {
			err = recorder.CheckTable(octx, pool)
		}
		if err != nil {
			pool.Close()
		}
	}
	cancel()
	if err != nil {
		return err
	}
	defer pool.Close()
	pg.set(pool)
	defer pg.set(nil)
	rec, err := recorder.New(b.js, pool, recorder.Options{Logger: log, Registerer: reg})
	if err != nil {
		return permanentError{err}
	}
	pg.setRecorder(rec)
	defer pg.setRecorder(nil)
	log.Info("recorder: writing the request log to postgres")
	if err := rec.Run(ctx); err != nil {
		return permanentError{fmt.Errorf("recorder: %w", err)}
	}
	return nil
}

// pgReady is the recorder's half of its /readyz: whether PostgreSQL
// answers the pool the recorder writes through. Safe for concurrent use;
// its methods do nothing on a nil pgReady.
type pgReady struct {
	pool    atomic.Pointer[pgxpool.Pool]
	lastErr atomic.Pointer[error]
	rec     atomic.Pointer[recorder.Recorder]
}

// setRecorder gives ready the recorder writing through the pool, whose
// table may refuse events while PostgreSQL answers.
func (p *pgReady) setRecorder(r *recorder.Recorder) {
	if p != nil {
		p.rec.Store(r)
	}
}

func (p *pgReady) set(pool *pgxpool.Pool) {
	if p != nil {
		p.pool.Store(pool)
	}
}

// failed records why the recorder could not start writing, for ready to
// say until it can.
func (p *pgReady) failed(err error) {
	if p != nil {
		p.lastErr.Store(&err)
	}
}

// ready pings PostgreSQL through the recorder's pool, for at most 2 s.
func (p *pgReady) ready(ctx context.Context) error {
	pool := p.pool.Load()
	if pool == nil {
		if err := p.lastErr.Load(); err != nil {
			return fmt.Errorf("postgres: %w", *err)
		}
		return errors.New("postgres: not connected yet")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if r := p.rec.Load(); r != nil {
		if err := r.Refusing(); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
	}
	return nil
}
