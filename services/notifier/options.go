package notifier

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Option defaults.
const (
	DefaultBackoffBase      = time.Second
	DefaultBackoffMax       = 5 * time.Minute
	DefaultConcurrency      = 32
	DefaultDLQDepthInterval = 15 * time.Second
)

// Clock tells the time. It must be safe for concurrent use.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options tune a Notifier. The zero value is ready to use.
type Options struct {
	// Logger receives delivery failures and dead letters (default
	// slog.Default()). Secrets and event bodies are never logged.
	Logger *slog.Logger
	// HTTPClient sends the deliveries. Its Timeout should be zero: each
	// attempt is bounded by the endpoint's Timeout. The default keeps
	// Concurrency idle connections per host.
	HTTPClient *http.Client
	// Registerer receives the metrics (default: none are exported).
	Registerer prometheus.Registerer
	// BackoffBase and BackoffMax shape the retry schedule (defaults 1s and
	// 5m); see Backoff.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Concurrency is the number of deliveries in flight per endpoint in
	// this process (default 32). As many again may wait in the client's
	// prefetch buffer.
	Concurrency int
	// AckWait is how long the server waits for an outcome before it
	// redelivers an event. It must exceed every endpoint's Timeout; the
	// default, per endpoint, is 2×Timeout+10s, which also covers the time an
	// event waits in the prefetch buffer for a free slot.
	AckWait time.Duration
	// DLQDepthInterval is how often llmproxy_webhook_dlq_depth is refreshed
	// (default 15s).
	DLQDepthInterval time.Duration
	// Clock and Rand are injectable for tests (defaults: the system clock
	// and the global generator).
	Clock Clock
	Rand  Rand
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = DefaultBackoffBase
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = o.BackoffBase
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.DLQDepthInterval <= 0 {
		o.DLQDepthInterval = DefaultDLQDepthInterval
	}
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	if o.Rand == nil {
		o.Rand = globalRand{}
	}
	if o.HTTPClient == nil {
		o.HTTPClient = newHTTPClient(o.Concurrency, nil)
	}
	return o
}

func (o Options) validate() error {
	if o.AckWait < 0 {
		return errors.New("ack wait must not be negative")
	}
	return nil
}

// ackWait is the AckWait of the consumer of an endpoint with timeout.
func (o Options) ackWait(timeout time.Duration) time.Duration {
	if o.AckWait > 0 {
		return o.AckWait
	}
	return 2*timeout + 10*time.Second
}

// newHTTPClient is a client for deliveries, perHost at a time to a host,
// with tlsConfig (nil: the system's).
func newHTTPClient(perHost int, tlsConfig *tls.Config) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if tlsConfig != nil {
		tr.TLSClientConfig = tlsConfig
	}
	tr.MaxIdleConnsPerHost = perHost
	tr.MaxIdleConns = 0
	return &http.Client{
		Transport: tr,
		// A receiver's redirect is not followed: the body would be re-sent
		// to wherever it points.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
