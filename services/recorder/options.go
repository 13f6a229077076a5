package recorder

import (
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Option defaults.
const (
	DefaultDurable      = "recorder"
	DefaultBatchSize    = 500
	DefaultBatchWait    = 200 * time.Millisecond
	DefaultBatchBytes   = 16 << 20
	DefaultAckWait      = 10 * time.Second
	DefaultWriteTimeout = 30 * time.Second
	DefaultRetryWait    = 2 * time.Second
)

// Options tune a Recorder. The zero value is ready to use.
type Options struct {
	// Logger receives write failures and poison messages (default
	// slog.Default()). Event bodies are never logged.
	Logger *slog.Logger
	// Registerer receives the metrics (default: none are exported).
	Registerer prometheus.Registerer
	// Durable is the name of the shared durable consumer (default
	// "recorder"). Every recorder process with the same name shares the
	// work.
	Durable string
	// BatchSize and BatchWait bound one batch: at most BatchSize events,
	// collected for at most BatchWait (defaults 500 and 200ms).
	BatchSize int
	BatchWait time.Duration
	// BatchBytes bounds the size of one batch's events as NATS delivers
	// them (default 16 MiB), so that a backlog of large events is not held
	// BatchSize at a time in memory. It is raised to the server's
	// max_payload and some room for headers when below: every event fits in
	// a batch of its own.
	BatchBytes int
	// AckWait is how long the server waits for a batch to be acknowledged
	// before it redelivers its events (default 10s): after a recorder
	// crashed, the batch it held comes back to the others (or to it, once
	// restarted) after AckWait. While a batch is being written the
	// recorder keeps it alive with progress acknowledgements, so a write
	// may take longer (up to WriteTimeout).
	AckWait time.Duration
	// WriteTimeout bounds one batch's transaction (default 30s). A batch
	// that has started is finished even after Run's context is done.
	WriteTimeout time.Duration
	// RetryWait is how long events of a batch that could not be written
	// wait before they are redelivered (default 2s).
	RetryWait time.Duration
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Durable == "" {
		o.Durable = DefaultDurable
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	if o.BatchWait <= 0 {
		o.BatchWait = DefaultBatchWait
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.RetryWait <= 0 {
		o.RetryWait = DefaultRetryWait
	}
	return o
}

func (o Options) validate() error {
	if o.AckWait < 30*time.Millisecond {
		return errors.New("ack wait must be at least 30ms")
	}
	return nil
}
