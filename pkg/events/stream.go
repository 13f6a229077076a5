package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamOptions sets how the event streams are kept.
type StreamOptions struct {
	// MaxAge is how long events are retained (default 7 days).
	MaxAge time.Duration
	// Replicas is the number of JetStream replicas (default 1; 3 on a cluster).
	Replicas int
	// DuplicateWindow is the window in which a repeated Nats-Msg-Id is
	// dropped by the server (default 2 minutes).
	DuplicateWindow time.Duration
}

func (o StreamOptions) withDefaults() StreamOptions {
	if o.MaxAge <= 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DuplicateWindow < 2*time.Minute {
		o.DuplicateWindow = 2 * time.Minute
	}
	return o
}

// StreamConfig returns the configuration of the LLMPROXY stream.
func StreamConfig(o StreamOptions) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "LLMProxy request-completed events",
		Subjects:    []string{StreamSubject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
	}
}

// DLQStreamConfig returns the configuration of the dead-letter stream.
func DLQStreamConfig(o StreamOptions) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        DLQStreamName,
		Description: "LLMProxy webhook dead letters",
		Subjects:    []string{DLQSubject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge * 4,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
	}
}

// EnsureStreams creates or updates the LLMPROXY and LLMPROXY_DLQ streams.
// It is safe to call from every process at start.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, cfg := range []jetstream.StreamConfig{StreamConfig(o), DLQStreamConfig(o)} {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			// An existing stream with other replicas cannot always be
			// updated in place; keep it rather than fail the start.
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue
			}
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
