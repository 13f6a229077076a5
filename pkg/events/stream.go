package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PullExpiry is how long each pull request of a consumer reading the
// stream (the meter's, the notifier's) lives on the server; the client's
// heartbeat check runs at half of it. That check is what gets a consumer
// going again when the server holds no pull request from it while the
// client believes one is still outstanding: the consumer then shows events
// pending and no waiting pulls, and nothing is delivered until the check
// fires (seen about once in 25 runs of 20,000 webhook deliveries on a busy
// 2-core host; nats.go issue 1622). The library's default expiry, 30 s,
// made that a 30 s stall; this one bounds it to about 2 s, for one small
// pull request every 2 s from an idle consumer.
const PullExpiry = 2 * time.Second

// HeartbeatMissLevel is the level at which a consumer logs its inARow'th
// pull request in a row that ended without a heartbeat: WARN at every
// HeartbeatMissesToWarn'th, DEBUG otherwise. One alone is a loaded
// machine's scheduling as often as a server's trouble, and the next pull
// recovers it.
func HeartbeatMissLevel(inARow int) slog.Level {
	if inARow > 0 && inARow%HeartbeatMissesToWarn == 0 {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// HeartbeatMissesToWarn: see HeartbeatMissLevel.
const HeartbeatMissesToWarn = 3

// StreamOptions sets how the event streams are kept.
type StreamOptions struct {
	// MaxAge is how long events are retained (default 7 days).
	MaxAge time.Duration
	// Replicas is the number of JetStream replicas (default 1; 3 on a cluster).
	Replicas int
	// DuplicateWindow is the window in which a repeated Nats-Msg-Id is
	// dropped by the server (default 2 minutes).
	DuplicateWindow time.Duration
	// Log, when set, is told of a retention EnsureStreams keeps rather
	// than lower (see EnsureStreams).
	Log *slog.Logger
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

// EnsureStreams creates the LLMPROXY and LLMPROXY_DLQ streams, or updates
// one whose settings differ from o. It is safe to call from every process
// at start: a stream that already has these settings is left alone, so
// processes starting together do not update a stream under each other's
// consumers. A stream's retention is raised but never lowered: a shorter
// max age drops at once the events older than it, those no meter has
// applied yet included, and processes whose configs disagree would set it
// back and forth; the longer one is kept, and said so to o.Log.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	return ensureStreams(ctx, js, o, true)
}

// CreateStreams creates the LLMPROXY and LLMPROXY_DLQ streams that do not
// exist and leaves existing ones as they are, whatever their settings: for
// commands that only read or replay events, whose config must not change
// the servers' streams.
func CreateStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	return ensureStreams(ctx, js, o, false)
}

// MakeMissingStreams creates the LLMPROXY and LLMPROXY_DLQ streams that do
// not exist, as CreateStreams does, and returns the names of those it
// made: for a process that checks, while it runs, that no stream has gone
// (an operator deleted one).
func MakeMissingStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) (made []string, err error) {
	for _, cfg := range []jetstream.StreamConfig{StreamConfig(o), DLQStreamConfig(o)} {
		_, err := js.Stream(ctx, cfg.Name)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			if err != nil {
				return made, fmt.Errorf("check stream %s: %w", cfg.Name, err)
			}
			continue
		}
		if err := ensureStream(ctx, js, cfg, false, nil); err != nil {
			return made, fmt.Errorf("make stream %s: %w", cfg.Name, err)
		}
		made = append(made, cfg.Name)
	}
	return made, nil
}

func ensureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions, update bool) error {
	for _, cfg := range []jetstream.StreamConfig{StreamConfig(o), DLQStreamConfig(o)} {
		if err := ensureStream(ctx, js, cfg, update, o.Log); err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, update bool, log *slog.Logger) error {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil // another process created it meanwhile
		}
		if other := overlapping(ctx, js, err, cfg.Subjects); other != "" {
			return fmt.Errorf("%w: stream %s already captures %s; remove it or narrow its subjects (until then the "+
				"gateways keep their events in their outboxes)", err, other, cfg.Subjects[0])
		}
		return err
	}
	if err != nil {
		return err
	}
	// The persist mode is fixed when a stream is created: one made in
	// async mode (by an earlier release) is updated in it.
	have := s.CachedInfo().Config
	cfg.PersistMode = have.PersistMode
	if !update {
		return nil
	}
	if have.MaxAge == 0 || have.MaxAge > cfg.MaxAge {
		// 0: kept for ever.
		if log != nil {
			log.Warn("the event stream keeps its longer retention: lowering it would drop at once the events older than "+
				"the new one, those no meter has applied yet included; lower it by hand once the meters have caught up",
				"stream", cfg.Name, "max_age", have.MaxAge.String(), "configured", cfg.MaxAge.String())
		}
		cfg.MaxAge = have.MaxAge
	}
	if sameSettings(have, cfg) {
		return nil
	}
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// errCodeSubjectOverlap is JetStream's error code for a stream whose
// subjects overlap an existing stream's (nats.go names no constant for it).
const errCodeSubjectOverlap jetstream.ErrorCode = 10065

// overlapping returns the name of the stream that captures subjects when
// err is the server's refusal of a stream whose subjects overlap another's
// ("" otherwise, or when the server does not say).
func overlapping(ctx context.Context, js jetstream.JetStream, err error, subjects []string) string {
	var api *jetstream.APIError
	if !errors.As(err, &api) || api.ErrorCode != errCodeSubjectOverlap {
		return ""
	}
	for _, s := range subjects {
		// The server lists the streams whose subjects overlap s.
		names := js.StreamNames(ctx, jetstream.WithStreamListSubject(s))
		other := ""
		for name := range names.Name() { // read whole: the lister sends them all
			if other == "" {
				other = name
			}
		}
		if other != "" {
			return other
		}
	}
	return ""
}

// sameSettings reports whether the stream's config already has what cfg
// asks for.
func sameSettings(have, want jetstream.StreamConfig) bool {
	if len(have.Subjects) != len(want.Subjects) {
		return false
	}
	for i := range want.Subjects {
		if have.Subjects[i] != want.Subjects[i] {
			return false
		}
	}
	return have.Storage == want.Storage && have.Retention == want.Retention &&
		have.MaxAge == want.MaxAge && have.Duplicates == want.Duplicates &&
		have.Replicas == want.Replicas && have.Description == want.Description
}
