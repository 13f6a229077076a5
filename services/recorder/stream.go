package recorder

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// ReadStream returns the requests that f selects from the LLMPROXY stream
// itself, the short-term request log: the newest f.Limit of them by
// arrival, oldest first, each once. It reads with an ordered consumer (nothing durable is left
// behind) on the key's subject, or on every key's, from f.Since, and stops
// at the last matching event stored when it was called, so it never waits
// for new ones. Without KeyID and Since it reads the whole window, which
// costs as much as the window holds; with RequestID it stops at the first
// match.
func ReadStream(ctx context.Context, js jetstream.JetStream, f Filter) ([]events.RequestCompleted, error) {
	f = f.withDefaults(time.Now())
	subject := events.SubjectCompletedAll
	if f.KeyID != "" {
		subject = events.Subject(f.KeyID)
	}
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return nil, fmt.Errorf("read stream: %w", err)
	}
	last, err := stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read stream: last event on %s: %w", subject, err)
	}
	if !f.Since.IsZero() && last.Time.Before(f.Since) {
		return nil, nil
	}

	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{subject},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Minute,
	}
	if !f.Since.IsZero() {
		since := f.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamName, cfg)
	if err != nil {
		return nil, fmt.Errorf("read stream: consumer: %w", err)
	}
	// Each pull asks for at most 500 events and twice the largest a
	// server takes: without a byte limit, 500 events of several MiB each
	// were asked at once, and the server, holding them for a client that
	// could not take them so fast, grew by hundreds of MiB and cut the
	// connection.
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(500, max(2*int(js.Conn().MaxPayload()), 8<<20)))
	if err != nil {
		return nil, fmt.Errorf("read stream: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	// The consumer goes with the read: left to its inactive threshold,
	// it held the events it had gathered for a client gone. The reading
	// stops first: a pull the deleted consumer leaves open would have
	// the ordered consumer make a new one.
	defer func() {
		it.Stop()
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = js.DeleteConsumer(dctx, events.StreamName, info.Name)
			cancel()
		}
	}()

	// kept holds the matches, trimmed to the newest f.Limit by arrival
	// whenever it holds twice as many: events are stored as their
	// requests end (or, from an outbox, once NATS is back), so the
	// stream's order is not the requests' order.
	kept := make([]events.RequestCompleted, 0, min(2*f.Limit, 2048))
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("read stream: %w", ctx.Err())
			}
			return nil, fmt.Errorf("read stream: %w", err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return nil, fmt.Errorf("read stream: %w", err)
		}
		if e, err := events.Unmarshal(msg.Data()); err == nil && f.match(&e) {
			kept = append(kept, e)
			if len(kept) >= 2*f.Limit {
				kept = newest(kept, f.Limit)
			}
			if f.RequestID != "" {
				break
			}
		}
		if md.Sequence.Stream >= last.Sequence || md.NumPending == 0 {
			break
		}
	}
	return newest(kept, f.Limit), nil
}

// newest sorts evs by arrival (then request id), drops the repeats of an
// event the stream holds twice (an outbox publish past the duplicate
// window), and returns the last n, oldest first, as PostgreSQL's query
// orders them: arrival to the microsecond, as its timestamptz keeps it,
// so that requests a few nanoseconds apart are ordered by id there and
// here alike.
func newest(evs []events.RequestCompleted, n int) []events.RequestCompleted {
	slices.SortFunc(evs, func(a, b events.RequestCompleted) int {
		if c := a.Timestamp.Truncate(time.Microsecond).Compare(b.Timestamp.Truncate(time.Microsecond)); c != 0 {
			return c
		}
		return strings.Compare(a.RequestID, b.RequestID)
	})
	evs = slices.CompactFunc(evs, func(a, b events.RequestCompleted) bool { return a.RequestID == b.RequestID })
	if len(evs) > n {
		evs = append(evs[:0], evs[len(evs)-n:]...)
	}
	return evs
}
