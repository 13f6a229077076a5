package publish

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configures a Publisher. The zero value is usable: every field
// left zero takes the default stated on it.
type Options struct {
	// MaxOutboxBytes bounds the outbox segment files on disk (default
	// 1 GiB). When they reach it, new events wait in memory (see
	// MaxMemoryBytes) until acknowledgements free room.
	MaxOutboxBytes int64
	// MaxMemoryBytes bounds the encoded events held in memory while the
	// outbox is full (default 64 MiB). An event arriving when both bounds
	// are reached is dropped: it is counted in llmproxy_events_dropped_total
	// and an ERROR line is logged at most once per WarnInterval.
	MaxMemoryBytes int64
	// SegmentBytes is the size at which a new outbox segment file is started
	// (default 64 MiB, or MaxOutboxBytes/8 when that is smaller). Disk space
	// is given back a whole segment at a time.
	SegmentBytes int64
	// QueueSize is the capacity of the hand-off queue between Publish and
	// the writer goroutine (default 8192). When it is full, Publish writes
	// the event to the outbox itself.
	QueueSize int
	// MaxInFlight bounds the publishes awaiting a JetStream ack (default
	// 1024).
	MaxInFlight int
	// Linger is how long the sender waits, once woken from idle by a new
	// event, for more to arrive before it reads the outbox and publishes
	// (default 2 ms; negative turns it off). The event is already in the
	// outbox, so the wait costs no durability: it only delays when the
	// meter sees it, and it lets a gateway under light load publish a few
	// events per round trip to NATS instead of waking the sender, NATS and
	// the meter once per request.
	Linger time.Duration
	// SyncInterval is how often the outbox is fsynced (default 100 ms).
	SyncInterval time.Duration
	// AckTimeout is how long a publish may wait for its ack before it counts
	// as failed and is retried (default 10 s).
	AckTimeout time.Duration
	// RetryInitial and RetryMax bound the wait between retries while NATS is
	// unreachable (defaults 100 ms and 5 s).
	RetryInitial, RetryMax time.Duration
	// WarnInterval is the least time between two ERROR lines about a full
	// outbox or failing publishes (default 10 s).
	WarnInterval time.Duration
	// Registerer receives the publisher's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives the publisher's log lines (default slog.Default()).
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.MaxOutboxBytes == 0 {
		o.MaxOutboxBytes = 1 << 30
	}
	if o.MaxMemoryBytes == 0 {
		o.MaxMemoryBytes = 64 << 20
	}
	if o.SegmentBytes == 0 {
		o.SegmentBytes = min(64<<20, max(o.MaxOutboxBytes/8, 4096))
	}
	if o.QueueSize == 0 {
		o.QueueSize = 8192
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 1024
	}
	if o.Linger == 0 {
		o.Linger = 2 * time.Millisecond
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = 100 * time.Millisecond
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = 10 * time.Second
	}
	if o.RetryInitial == 0 {
		o.RetryInitial = 100 * time.Millisecond
	}
	if o.RetryMax == 0 {
		o.RetryMax = 5 * time.Second
	}
	if o.WarnInterval == 0 {
		o.WarnInterval = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Validate reports the first option that cannot work, after defaults.
func (o Options) Validate() error {
	var errs []error
	check := func(ok bool, name, why string) {
		if !ok {
			errs = append(errs, fmt.Errorf("publish: %s: %s", name, why))
		}
	}
	check(o.MaxOutboxBytes > 0, "MaxOutboxBytes", "must be positive")
	check(o.MaxMemoryBytes >= 0, "MaxMemoryBytes", "must not be negative")
	check(o.SegmentBytes > 0, "SegmentBytes", "must be positive")
	check(o.QueueSize > 0, "QueueSize", "must be positive")
	check(o.MaxInFlight > 0, "MaxInFlight", "must be positive")
	check(o.SyncInterval > 0, "SyncInterval", "must be positive")
	check(o.AckTimeout > 0, "AckTimeout", "must be positive")
	check(o.RetryInitial > 0 && o.RetryMax >= o.RetryInitial, "RetryInitial/RetryMax", "need 0 < RetryInitial <= RetryMax")
	check(o.WarnInterval > 0, "WarnInterval", "must be positive")
	return errors.Join(errs...)
}
