package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/recorder"
)

// runRecorder runs the recorder target until ctx is done: it connects to
// logging.postgres.url, creates the request-log table when missing and
// writes every event to it. While PostgreSQL cannot be reached it keeps
// trying, so that a database outage at start does not stop the other
// targets of the process; events wait in the stream meanwhile.
func runRecorder(ctx context.Context, cfg *config.Config, b *bus, log *slog.Logger, reg prometheus.Registerer) error {
	url := cfg.Logging.Postgres.URL
	if url == "" {
		return errors.New("logging.postgres.url is required for the recorder")
	}
	log = log.With("worker", "recorder")
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := startRecorder(ctx, url, b, log, reg)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return err
		}
		log.Warn("recorder: postgres not ready; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// permanentError is a recorder failure that waiting will not fix.
type permanentError struct{ error }

func startRecorder(ctx context.Context, url string, b *bus, log *slog.Logger, reg prometheus.Registerer) error {
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	pool, err := recorder.OpenPool(octx, url)
	if err == nil {
		err = recorder.Migrate(octx, pool)
		if err != nil {
			pool.Close()
		}
	}
	cancel()
	if err != nil {
		return err
	}
	defer pool.Close()
	rec, err := recorder.New(b.js, pool, recorder.Options{Logger: log, Registerer: reg})
	if err != nil {
		return permanentError{err}
	}
	log.Info("recorder: writing the request log to postgres")
	if err := rec.Run(ctx); err != nil {
		return permanentError{fmt.Errorf("recorder: %w", err)}
	}
	return nil
}
