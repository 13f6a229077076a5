package meter

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultDurable is the name of the durable consumer every meter process
// shares.
const DefaultDurable = "meter"

// Options configures a Meter. The zero value is usable: every field left
// zero takes the default stated on it.
type Options struct {
	// Durable is the consumer's name (default "meter"). Every meter process
	// with the same name shares the work.
	Durable string
	// BatchSize is the most events applied to the store in one call
	// (default 512).
	BatchSize int
	// BatchWait is how long a batch waits to fill once its first event has
	// arrived (default 20 ms).
	BatchWait time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering
	// (default 30 s).
	AckWait time.Duration
	// MaxAckPending bounds the events delivered and not yet acked, across
	// all meters (default 64 × BatchSize).
	MaxAckPending int
	// NakDelay is the redelivery delay after a failed store write; it
	// doubles with every delivery of the same event up to MaxNakDelay
	// (defaults 1 s and 1 min).
	NakDelay, MaxNakDelay time.Duration
	// ApplyTimeout bounds one store write (default 30 s). A write under way
	// when Run's context is cancelled still runs to completion within it, so
	// that its events are acked rather than redelivered.
	ApplyTimeout time.Duration
	// LagInterval is how often llmproxy_meter_lag is refreshed (default 5 s).
	LagInterval time.Duration
	// Registerer receives the meter's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives the meter's log lines (default slog.Default()).
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Durable == "" {
		o.Durable = DefaultDurable
	}
	if o.BatchSize == 0 {
		o.BatchSize = 512
	}
	if o.BatchWait == 0 {
		o.BatchWait = 20 * time.Millisecond
	}
	if o.AckWait == 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = 64 * o.BatchSize
	}
	if o.NakDelay == 0 {
		o.NakDelay = time.Second
	}
	if o.MaxNakDelay == 0 {
		o.MaxNakDelay = time.Minute
	}
	if o.ApplyTimeout == 0 {
		o.ApplyTimeout = 30 * time.Second
	}
	if o.LagInterval == 0 {
		o.LagInterval = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Validate reports every option that cannot work, after defaults.
func (o Options) Validate() error {
	var errs []error
	check := func(ok bool, name, why string) {
		if !ok {
			errs = append(errs, fmt.Errorf("meter: %s: %s", name, why))
		}
	}
	check(o.BatchSize > 0, "BatchSize", "must be positive")
	check(o.BatchWait > 0, "BatchWait", "must be positive")
	check(o.AckWait > 0, "AckWait", "must be positive")
	check(o.MaxAckPending >= o.BatchSize, "MaxAckPending", "must be at least BatchSize")
	check(o.NakDelay > 0 && o.MaxNakDelay >= o.NakDelay, "NakDelay/MaxNakDelay", "need 0 < NakDelay <= MaxNakDelay")
	check(o.ApplyTimeout > 0, "ApplyTimeout", "must be positive")
	check(o.LagInterval > 0, "LagInterval", "must be positive")
	return errors.Join(errs...)
}
