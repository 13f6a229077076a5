package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// consumerLookupTimeout bounds the look-up ConsumerGone makes: one sent
// just as the connection drops is never answered, and the next failure
// asks again.
const consumerLookupTimeout = time.Second

// recreateWaitMax bounds the delay between RecreateConsumer's attempts.
const recreateWaitMax = 5 * time.Second

// ConsumerGone reports whether err, from pulling the durable consumer of
// the event stream (a fetch, or a message iterator), means that the
// consumer or the stream no longer exists: deleted, or lost with the whole
// store by a NATS server that restarted without it. A consumer deleted
// while a pull waits on it says so; one lost with the store says nothing
// (its pulls go unanswered, or find no responders), so any other failure
// is checked with a look-up while connected. Disconnected, a look-up would
// only wait for the API timeout; the failures after the reconnection tell.
func ConsumerGone(ctx context.Context, js jetstream.JetStream, durable string, err error) bool {
	switch {
	case err == nil || ctx.Err() != nil:
		return false
	case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
		errors.Is(err, jetstream.ErrStreamNotFound):
		return true
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, jetstream.ErrConnectionClosed),
		errors.Is(err, jetstream.ErrServerShutdown), !js.Conn().IsConnected():
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, consumerLookupTimeout)
	defer cancel()
	_, err = js.Consumer(ctx, StreamName, durable)
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// RecreateConsumer makes a consumer that ConsumerGone found gone (cause
// says how) again with create, retrying with a delay that doubles from wait
// up to 5 s while the stream does not exist yet: the process that lost it
// makes it again on reconnecting. who names the worker in the log lines:
// the loss is logged once (WARN), and so is the new consumer (INFO); the
// attempts in between at debug level. It returns an error only when ctx is
// done or the connection is closed.
func RecreateConsumer(ctx context.Context, log *slog.Logger, who string, cause error, wait time.Duration,
	create func(context.Context) (jetstream.Consumer, error)) (jetstream.Consumer, error) {
	log.Warn(who+": consumer is gone (NATS lost its store?); creating it again", "err", cause)
	start, limit := time.Now(), max(wait, recreateWaitMax)
	for {
		c, err := create(ctx)
		if err == nil {
			log.Info(who+": consumer created again; resuming", "after", time.Since(start).Round(time.Millisecond))
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, jetstream.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionClosed) {
			return nil, fmt.Errorf("create consumer again: %w", err)
		}
		log.Debug(who+": create consumer again", "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, limit)
	}
}
