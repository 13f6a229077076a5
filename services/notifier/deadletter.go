package notifier

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead-letter reasons, the values of DeadLetter.Reason.
const (
	// ReasonPermanent: the endpoint answered with a status that retrying
	// will not change (a 4xx other than 408 and 429).
	ReasonPermanent = "permanent_failure"
	// ReasonMaxAttempts: every allowed attempt failed.
	ReasonMaxAttempts = "max_attempts_exceeded"
	// ReasonMaxAge: the event became older than the endpoint's MaxAge while
	// it was being retried.
	ReasonMaxAge = "max_age_exceeded"
)

// DeadLetter is one event an endpoint did not take, as stored on the
// LLMPROXY_DLQ stream (subject events.DLQSubjectFor(Endpoint), Nats-Msg-Id
// "<endpoint>:<event_id>").
type DeadLetter struct {
	// Seq is the dead letter's sequence in LLMPROXY_DLQ; it is not part of
	// the stored record.
	Seq uint64 `json:"-"`

	Endpoint string `json:"endpoint"`
	// URL is the endpoint's scheme and host, without what may carry
	// credentials (user info, path, query, fragment); replay goes by
	// Endpoint, to the configured URL.
	URL     string `json:"url"`
	EventID string `json:"event_id"`
	// Reason is one of the Reason constants.
	Reason string `json:"reason"`
	// Attempts is the number of delivery attempts (POSTs) made before
	// giving up.
	Attempts   int       `json:"attempts"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
	FailedAt   time.Time `json:"failed_at"`
	// Event is the event body exactly as it was published.
	Event json.RawMessage `json:"event"`
}

// DLQFilter selects dead letters; zero fields match everything.
type DLQFilter struct {
	// Endpoint keeps only the dead letters of this endpoint.
	Endpoint string
	// FormerName, with Endpoint, is the name that endpoint had before
	// (Endpoint.LegacyName): the dead letters recorded under it are the
	// endpoint's too.
	FormerName string
	// ID keeps only the dead letters whose event id, "<endpoint>:<event id>"
	// message id or DLQ sequence number (decimal) equals it.
	ID string
	// Limit stops after this many matches (0 = no limit).
	Limit int
}

func (f DLQFilter) match(d DeadLetter) bool {
	if f.Endpoint != "" && d.Endpoint != f.Endpoint && (f.FormerName == "" || d.Endpoint != f.FormerName) {
		return false
	}
	if f.ID == "" {
		return true
	}
	return f.ID == d.EventID || f.ID == dlqMsgID(d.Endpoint, d.EventID) || f.ID == strconv.FormatUint(d.Seq, 10)
}

func dlqMsgID(endpoint, eventID string) string { return endpoint + ":" + eventID }

// publishDeadLetter stores d on LLMPROXY_DLQ and returns once the server has
// it. A repeat within the stream's duplicate window is dropped by the server.
func publishDeadLetter(ctx context.Context, js jetstream.JetStream, d DeadLetter) error {
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encode dead letter: %w", err)
	}
	_, err = js.Publish(ctx, events.DLQSubjectFor(d.Endpoint), data,
		jetstream.WithMsgID(dlqMsgID(d.Endpoint, d.EventID)),
		jetstream.WithExpectStream(events.DLQStreamName))
	if err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	return nil
}

// displayURL returns raw's scheme and host, or "" when it does not parse:
// every other part may carry a credential (user info, a query token, or a
// path such as Slack's and Discord's, whose last segment is the secret).
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
}

// rawEvent keeps body as raw JSON in a dead letter; a body that is not JSON
// (no gateway publishes one) is kept as a JSON string rather than lost.
func rawEvent(body []byte) json.RawMessage {
	if json.Valid(body) {
		return json.RawMessage(body)
	}
	s, _ := json.Marshal(string(body))
	return s
}

// ListDLQ returns the dead letters on LLMPROXY_DLQ that match filter, oldest
// first. It reads the stream with an ephemeral ordered consumer and so never
// changes it; its cost is one read of every dead letter of the endpoint (or
// of all endpoints).
func ListDLQ(ctx context.Context, js jetstream.JetStream, filter DLQFilter) ([]DeadLetter, error) {
	stream, err := js.Stream(ctx, events.DLQStreamName)
	if err != nil {
		return nil, fmt.Errorf("dlq stream: %w", err)
	}
	// One endpoint's dead letters are read through its subject; with a
	// former name too, through every endpoint's (a consumer of several
	// subjects needs a server of 2.10 or later), matched one by one.
	subject := events.DLQSubject
	if filter.Endpoint != "" && filter.FormerName == "" {
		subject = events.DLQSubjectFor(filter.Endpoint)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, fmt.Errorf("dlq stream info: %w", err)
	}
	if info.State.Msgs == 0 || (subject != events.DLQSubject && len(info.State.Subjects) == 0) {
		return nil, nil
	}
	cons, err := js.OrderedConsumer(ctx, events.DLQStreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("dlq consumer: %w", err)
	}

	var out []DeadLetter
	for {
		// A dead letter deleted between Info and here leaves nothing to
		// fetch; the short wait then ends the listing.
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read dlq: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return out, fmt.Errorf("read dlq: %w", err)
		}
		var d DeadLetter
		if err := json.Unmarshal(msg.Data(), &d); err != nil {
			return out, fmt.Errorf("decode dead letter %d: %w", meta.Sequence.Stream, err)
		}
		d.Seq = meta.Sequence.Stream
		if filter.match(d) {
			out = append(out, d)
			if filter.Limit > 0 && len(out) >= filter.Limit {
				return out, nil
			}
		}
		if meta.NumPending == 0 {
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return out, err
		}
	}
}

// Replay re-delivers dead letters to their endpoints, signed as any
// delivery, and deletes each one that the endpoint accepts (2xx) from
// LLMPROXY_DLQ. A dead letter recorded under an endpoint's LegacyName goes to that
// endpoint. filter selects the dead letters (its Limit is ignored); the
// zero filter replays all, and one with an ID that selects nothing is an
// error. Dead letters that fail again, or whose endpoint is not in
// endpoints, stay; the returned error lists them. Replay makes one attempt
// per dead letter, one at a time.
func Replay(ctx context.Context, js jetstream.JetStream, endpoints []Endpoint, filter DLQFilter) (delivered int, err error) {
	byName := make(map[string]Endpoint, len(endpoints))
	for _, e := range endpoints {
		byName[e.Name] = e.withDefaults()
	}
	for _, e := range endpoints {
		if _, taken := byName[e.LegacyName]; e.LegacyName != "" && !taken {
			byName[e.LegacyName] = e.withDefaults()
		}
	}
	filter.Limit = 0
	letters, err := ListDLQ(ctx, js, filter)
	if err != nil {
		return 0, err
	}
	if filter.ID != "" && len(letters) == 0 {
		return 0, fmt.Errorf("no dead letter %q", filter.ID)
	}
	stream, err := js.Stream(ctx, events.DLQStreamName)
	if err != nil {
		return 0, fmt.Errorf("dlq stream: %w", err)
	}
	client := newHTTPClient(1, nil)
	defer client.CloseIdleConnections()
	// An endpoint with TLS files has a client of its own.
	clients := map[*tls.Config]*http.Client{}
	defer func() {
		for _, c := range clients {
			c.CloseIdleConnections()
		}
	}()
	clientOf := func(ep Endpoint) *http.Client {
		if ep.TLSConfig == nil {
			return client
		}
		c := clients[ep.TLSConfig]
		if c == nil {
			c = newHTTPClient(1, ep.TLSConfig)
			clients[ep.TLSConfig] = c
		}
		return c
	}

	var errs []error
	for _, d := range letters {
		if err := ctx.Err(); err != nil {
			return delivered, errors.Join(append(errs, err)...)
		}
		ep, ok := byName[d.Endpoint]
		if !ok {
			errs = append(errs, fmt.Errorf("dead letter %d (%s): endpoint %q is not configured", d.Seq, d.EventID, d.Endpoint))
			continue
		}
		a := post(ctx, clientOf(ep), ep, d.EventID, d.Event, time.Now())
		if classify(a.Status) != classSuccess {
			errs = append(errs, fmt.Errorf("dead letter %d (%s) to %s: %w", d.Seq, d.EventID, ep.Name, a.Err))
			continue
		}
		delivered++
		if err := stream.DeleteMsg(ctx, d.Seq); err != nil {
			errs = append(errs, fmt.Errorf("dead letter %d (%s) delivered but not removed: %w", d.Seq, d.EventID, err))
		}
	}
	return delivered, errors.Join(errs...)
}

// Discard deletes the dead letters filter selects from LLMPROXY_DLQ without
// delivering them (those of an endpoint since removed from the config, or
// events the receiver must never get), and returns how many it deleted.
// As for Replay, a filter with an ID that selects nothing is an error (a
// mistyped id, or one already gone, is not silently nothing to do); one
// without an ID that selects nothing is not.
func Discard(ctx context.Context, js jetstream.JetStream, filter DLQFilter) (int, error) {
	letters, err := ListDLQ(ctx, js, filter)
	if err != nil {
		return 0, err
	}
	if filter.ID != "" && len(letters) == 0 {
		return 0, fmt.Errorf("no dead letter %q", filter.ID)
	}
	if len(letters) == 0 {
		return 0, nil
	}
	stream, err := js.Stream(ctx, events.DLQStreamName)
	if err != nil {
		return 0, fmt.Errorf("dlq stream: %w", err)
	}
	n := 0
	for _, d := range letters {
		if err := stream.DeleteMsg(ctx, d.Seq); err != nil {
			return n, fmt.Errorf("dead letter %d (%s) not removed: %w", d.Seq, d.EventID, err)
		}
		n++
	}
	return n, nil
}
