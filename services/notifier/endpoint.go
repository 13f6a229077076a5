package notifier

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Endpoint defaults, the same as config.Webhook's.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultMaxAttempts = 10
	DefaultMaxAge      = 24 * time.Hour
)

// Endpoint is one receiver of every event. Its fields map one to one onto
// config.Webhook:
//
//	notifier.Endpoint{Name: w.Name, URL: w.URL, Secret: w.Secret,
//		Timeout: w.Timeout.D(), MaxAttempts: w.MaxAttempts, MaxAge: w.MaxAge.D(),
//		BackoffMax: w.BackoffMax.D(), LegacyName: w.LegacyName,
//		Unauthenticated: w.Unauthenticated, TLSConfig: <w.TLS.Load()>}
//
// and onto config.UsageHook, whose Retry is MaxAttempts (it has no name:
// give it one, e.g. "usage_hook").
type Endpoint struct {
	// Name identifies the endpoint: its durable consumer, its DLQ subject
	// and its metrics label. Required and unique.
	Name string
	// URL is where events are POSTed (http or https).
	URL string
	// Secret, when set, signs every delivery (X-LLMProxy-Signature).
	Secret string
	// Timeout bounds one delivery attempt (default 5s).
	Timeout time.Duration
	// MaxAttempts is the number of delivery attempts before the event is
	// dead-lettered (default 10).
	MaxAttempts int
	// MaxAge is how long after it was published an event is still retried
	// (default 24h).
	MaxAge time.Duration
	// BackoffMax, when set, caps this endpoint's retry backoff in place of
	// Options.BackoffMax (it is never below Options.BackoffBase).
	BackoffMax time.Duration
	// LegacyName, when set, is a name the endpoint had before (the default
	// name a URL's path once gave, config.Webhook.LegacyName). When the
	// endpoint's consumer does not exist yet and LegacyName's does, the new
	// consumer continues where that one was acknowledged to, and that one
	// is deleted. It may hold a secret and is never logged. It is ignored
	// when its durable name is that of an endpoint's consumer.
	LegacyName string
	// Unauthenticated, when true, delivers the events of requests refused
	// without a valid key (key_id "unauthenticated") too. By default they
	// are acknowledged unsent and counted in llmproxy_webhook_skipped_total:
	// any client can make them, as fast as the gateway refuses it.
	Unauthenticated bool
	// TLSConfig, when set, is the TLS configuration of the connections to
	// URL (a private CA, a client certificate) in place of the system's.
	TLSConfig *tls.Config
}

func (e Endpoint) withDefaults() Endpoint {
	if e.Timeout <= 0 {
		e.Timeout = DefaultTimeout
	}
	if e.MaxAttempts <= 0 {
		e.MaxAttempts = DefaultMaxAttempts
	}
	if e.MaxAge <= 0 {
		e.MaxAge = DefaultMaxAge
	}
	return e
}

func (e Endpoint) validate() error {
	if e.Name == "" {
		return errors.New("name is required")
	}
	if n := len(DurableName(e.Name)); n > maxConsumerName {
		return fmt.Errorf("name is %d characters; its consumer's name would be %d, past NATS's %d", len(e.Name), n, maxConsumerName)
	}
	u, err := url.Parse(e.URL)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want http(s)://host/…", e.URL)
	}
	return nil
}

// maxConsumerName is the longest consumer name NATS takes.
const maxConsumerName = 255

// DurableName returns the name of the durable consumer that feeds the
// endpoint called name: "notifier-" and the name with every character
// outside [A-Za-z0-9_-] replaced by '_'.
func DurableName(name string) string {
	return "notifier-" + strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		}
		return '_'
	}, name)
}

// consumerConfig is the durable consumer of endpoint e. It starts at the
// first event the stream holds, so an endpoint added later also receives
// what the stream still retains, and no event published before the
// consumer's first creation is missed; one that takes over from a legacy
// name starts where that one was (ensureConsumer).
//
// MaxDeliver is left unlimited on purpose: the notifier counts attempts
// itself (AttemptsBucket; NumDelivered also counts deliveries that were no
// attempt) and dead-letters the event on the last one. A server limit would
// make an event vanish when the last attempt is lost (process killed, ack
// wait expired) or when publishing its dead letter fails.
func consumerConfig(e Endpoint, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       DurableName(e.Name),
		Description:   "LLMProxy notifier → " + e.Name,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		FilterSubject: events.SubjectCompletedAll,
		MaxAckPending: 10_000,
	}
}
