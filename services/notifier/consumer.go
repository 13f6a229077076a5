package notifier

import (
	"context"
	"errors"
	"fmt"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

// ensureConsumer creates or updates the durable consumer of endpoint e and
// returns it.
//
// A consumer that exists keeps where it started: the server refuses to
// change a deliver policy, and a consumer taken over from a legacy name
// starts at a sequence, not at the first event.
//
// A consumer that does not exist yet, for an endpoint with a LegacyName
// whose consumer does exist, takes over from that one (takeOver) instead
// of starting at the first event the stream holds, which would deliver
// every retained event to the endpoint again.
func (n *Notifier) ensureConsumer(ctx context.Context, e Endpoint) (jetstream.Consumer, error) {
	cfg := consumerConfig(e, n.opts.ackWait(e.Timeout))
	for range 2 {
		cur, err := n.js.Consumer(ctx, events.StreamName, cfg.Durable)
		switch {
		case err == nil:
			was := cur.CachedInfo().Config
			cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = was.DeliverPolicy, was.OptStartSeq, was.OptStartTime
			return n.js.UpdateConsumer(ctx, events.StreamName, cfg)
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			return nil, err
		}
		c, err := n.takeOver(ctx, e, cfg)
		if !errors.Is(err, jetstream.ErrConsumerExists) {
			return c, err
		}
		// Another notifier created it since the look-up: update that one.
	}
	return nil, jetstream.ErrConsumerExists
}

// takeOver creates e's consumer. When the consumer of e.LegacyName exists,
// the new one starts just after that one's ack floor and the legacy one is
// deleted: events past the floor that were acknowledged out of order are
// delivered again, which at-least-once allows. Neither the legacy name nor
// its consumer's name is logged or put in an error: it may hold a secret
// (config.Webhook.LegacyName).
func (n *Notifier) takeOver(ctx context.Context, e Endpoint, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	if e.LegacyName == "" {
		return n.js.CreateConsumer(ctx, events.StreamName, cfg)
	}
	legacy := DurableName(e.LegacyName)
	old, err := n.js.Consumer(ctx, events.StreamName, legacy)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return n.js.CreateConsumer(ctx, events.StreamName, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("look up the consumer of the former default name: %w", err)
	}
	cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
	cfg.OptStartSeq = old.CachedInfo().AckFloor.Stream + 1
	c, err := n.js.CreateConsumer(ctx, events.StreamName, cfg)
	if err != nil {
		return nil, err
	}
	log := n.opts.Logger.With("endpoint", e.Name, "start_seq", cfg.OptStartSeq)
	if err := n.js.DeleteConsumer(ctx, events.StreamName, legacy); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		log.Warn("webhook: consumer of the former default name not deleted; delete it by hand", "err", err)
	} else {
		log.Info("webhook: consumer took over from the one of the former default name")
	}
	return c, nil
}

// errConsumerGone is returned by consume when the endpoint's consumer no
// longer exists: deleted, or lost with the whole store by a NATS server
// that restarted without it.
var errConsumerGone = errors.New("consumer is gone")
