package notifier

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// fakeMsg is a JetStream message without a broker.
type fakeMsg struct {
	subject  string
	body     []byte
	header   nats.Header
	meta     jetstream.MsgMetadata
	mu       sync.Mutex
	acked    bool
	nakDelay time.Duration
	nakked   bool
	ackErr   error
}

func (m *fakeMsg) Subject() string                           { return m.subject }
func (m *fakeMsg) Data() []byte                              { return m.body }
func (m *fakeMsg) Headers() nats.Header                      { return m.header }
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) { return &m.meta, nil }
func (m *fakeMsg) Ack() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acked = true
	return m.ackErr
}
func (m *fakeMsg) DoubleAck(context.Context) error { return m.Ack() }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nakked, m.nakDelay = true, d
	return nil
}

type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time { return c.t }

func TestHandlerOutcomes(t *testing.T) {
	now := time.Date(2026, 1, 14, 10, 30, 0, 0, time.UTC)
	tests := []struct {
		name           string
		status         int
		retryAfter     string
		delivered      uint64
		age            time.Duration
		dlqErr         error
		prev           *attemptRecord // failed attempts recorded before
		wantPosts      int
		wantAck        bool
		wantNak        bool
		wantNakAtLeast time.Duration
		wantReason     string
		wantDeferred   bool // the attempt is recorded as deferred by Retry-After
	}{
		{name: "2xx acks", status: 200, delivered: 1, wantPosts: 1, wantAck: true},
		{name: "503 retries", status: 503, delivered: 1, wantPosts: 1, wantNak: true},
		{name: "408 retries", status: 408, delivered: 2, wantPosts: 1, wantNak: true},
		{name: "429 honours Retry-After", status: 429, retryAfter: "30", delivered: 1, wantPosts: 1, wantNak: true, wantNakAtLeast: 30 * time.Second, wantDeferred: true},
		{name: "404 is permanent", status: 404, delivered: 1, wantPosts: 1, wantAck: true, wantReason: ReasonPermanent},
		{name: "last attempt dead-letters", status: 500, delivered: 5, prev: &attemptRecord{Attempts: 4}, wantPosts: 1, wantAck: true, wantReason: ReasonMaxAttempts},
		{name: "too old dead-letters", status: 500, delivered: 2, age: 2 * time.Hour, wantPosts: 1, wantAck: true, wantReason: ReasonMaxAge},
		{name: "old but delivered is fine", status: 200, delivered: 1, age: 2 * time.Hour, wantPosts: 1, wantAck: true},
		// Deliveries that were no attempt (handed back at shutdown, ack
		// wait run out in the buffer) do not use attempts up.
		{name: "redelivered past max_attempts still posts", status: 200, delivered: 6, wantPosts: 1, wantAck: true},
		{name: "redelivered past max_attempts retries", status: 500, delivered: 9, prev: &attemptRecord{Attempts: 2}, wantPosts: 1, wantNak: true},
		{name: "recorded attempts exhausted", status: 503, delivered: 9, prev: &attemptRecord{Attempts: 4}, wantPosts: 1, wantAck: true, wantReason: ReasonMaxAttempts},
		// Retry-After: the receiver said when; such retries do not use
		// up max_attempts, and max_age still bounds them.
		{name: "Retry-After does not use up attempts", status: 503, retryAfter: "1", delivered: 30, prev: &attemptRecord{Attempts: 4, Deferred: 20},
			wantPosts: 1, wantNak: true, wantNakAtLeast: time.Second, wantDeferred: true},
		{name: "Retry-After past max_age dead-letters", status: 503, retryAfter: "1", delivered: 30, age: 2 * time.Hour, prev: &attemptRecord{Attempts: 1, Deferred: 20},
			wantPosts: 1, wantAck: true, wantReason: ReasonMaxAge},
		{name: "dlq publish failure naks", status: 400, delivered: 1, dlqErr: errors.New("no stream"), wantPosts: 1, wantNak: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var posts int
			var mu sync.Mutex
			rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) int {
				mu.Lock()
				posts++
				mu.Unlock()
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				return tt.status
			})
			var letters []DeadLetter
			log := &memAttempts{}
			if tt.prev != nil {
				log.m = map[string]attemptRecord{attemptKey("ep", 7): *tt.prev}
			}
			opts := Options{BackoffBase: time.Millisecond, BackoffMax: 4 * time.Millisecond, Clock: fixedClock{now}, Rand: fixedRand{1, 1}}.withDefaults()
			h := testHandler(Endpoint{Name: "ep", URL: rc.srv.URL, MaxAttempts: 5, MaxAge: time.Hour}, opts, log)
			h.deadLetter = func(_ context.Context, d DeadLetter) error {
				if tt.dlqErr != nil {
					return tt.dlqErr
				}
				letters = append(letters, d)
				return nil
			}
			msg := &fakeMsg{
				body:   []byte(`{"request_id":"req_1"}`),
				header: nats.Header{},
				meta: jetstream.MsgMetadata{NumDelivered: tt.delivered, Timestamp: now.Add(-tt.age), Stream: "LLMPROXY",
					Sequence: jetstream.SequencePair{Stream: 7}},
			}
			h.handle(context.Background(), msg)

			var prev attemptRecord
			if tt.prev != nil {
				prev = *tt.prev
			}
			wantAttempt := prev.Attempts + prev.Deferred + 1 // all made, this one included
			if tt.wantNak && tt.dlqErr == nil {
				want := attemptRecord{Attempts: prev.Attempts + 1, Deferred: prev.Deferred}
				if tt.wantDeferred {
					want = attemptRecord{Attempts: prev.Attempts, Deferred: prev.Deferred + 1}
				}
				r, ok, _ := log.get(context.Background(), attemptKey("ep", 7))
				if !ok || r.Attempts != want.Attempts || r.Deferred != want.Deferred || r.LastStatus != tt.status {
					t.Errorf("recorded %+v (found %v), want %d attempts and %d deferred with status %d", r, ok, want.Attempts, want.Deferred, tt.status)
				}
			}

			if tt.wantAck && tt.dlqErr == nil {
				if r, ok, _ := log.get(context.Background(), attemptKey("ep", 7)); ok {
					t.Errorf("attempt record %+v kept after the event was settled", r)
				}
			}

			if posts != tt.wantPosts {
				t.Errorf("posts = %d, want %d", posts, tt.wantPosts)
			}
			if msg.acked != tt.wantAck || msg.nakked != tt.wantNak {
				t.Errorf("acked %v nakked %v, want %v %v", msg.acked, msg.nakked, tt.wantAck, tt.wantNak)
			}
			if tt.wantNak && tt.dlqErr == nil {
				if msg.nakDelay < tt.wantNakAtLeast || (tt.wantNakAtLeast == 0 && msg.nakDelay > 4*time.Millisecond) {
					t.Errorf("nak delay %s", msg.nakDelay)
				}
			}
			switch {
			case tt.wantReason == "" && len(letters) != 0:
				t.Errorf("unexpected dead letter %+v", letters)
			case tt.wantReason != "":
				if len(letters) != 1 {
					t.Fatalf("dead letters = %d, want 1", len(letters))
				}
				d := letters[0]
				if d.Reason != tt.wantReason || d.EventID != "req_1" || d.Endpoint != "ep" || string(d.Event) != string(msg.body) || !d.FailedAt.Equal(now) {
					t.Errorf("dead letter %+v", d)
				}
				if tt.wantPosts > 0 && d.LastStatus != tt.status {
					t.Errorf("last_status %d, want %d", d.LastStatus, tt.status)
				}
				if d.Attempts != wantAttempt {
					t.Errorf("attempts %d, want %d", d.Attempts, wantAttempt)
				}
			}
		})
	}
}

// testHandler is a handler of ep (defaults filled in) with opts, recording
// attempts in attempts, metrics on no registry and no log output; it has no
// dead-letter store unless the test sets one.
func testHandler(ep Endpoint, opts Options, attempts attemptLog) *handler {
	m, _ := newMetrics(nil)
	return &handler{
		ep:       ep.withDefaults(),
		client:   opts.HTTPClient,
		opts:     opts,
		metrics:  m,
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		attempts: attempts,
	}
}

// memAttempts is an attemptLog in memory.
type memAttempts struct {
	mu sync.Mutex
	m  map[string]attemptRecord
}

func (a *memAttempts) get(_ context.Context, key string) (attemptRecord, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.m[key]
	return r, ok, nil
}

func (a *memAttempts) put(_ context.Context, key string, r attemptRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]attemptRecord{}
	}
	a.m[key] = r
	return nil
}

func TestEventID(t *testing.T) {
	meta := &jetstream.MsgMetadata{Stream: "LLMPROXY", Sequence: jetstream.SequencePair{Stream: 42}}
	tests := []struct {
		name   string
		header nats.Header
		body   string
		want   string
	}{
		{"from Nats-Msg-Id", nats.Header{jetstream.MsgIDHeader: []string{"req_h"}}, `{"request_id":"req_b"}`, "req_h"},
		{"from body", nats.Header{}, `{"request_id":"req_b"}`, "req_b"},
		{"from sequence", nats.Header{}, `not json`, "LLMPROXY-42"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := eventID(tt.header, []byte(tt.body), meta); got != tt.want {
				t.Errorf("eventID = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTransportErrorHidesURL(t *testing.T) {
	ep := Endpoint{Name: "x", URL: "http://user:pass@127.0.0.1:1/hook"}.withDefaults()
	a := post(context.Background(), newHTTPClient(1, nil), ep, "id", []byte("{}"), time.Now())
	if a.Err == nil || a.Status != 0 {
		t.Fatalf("attempt = %+v", a)
	}
	if msg := a.Err.Error(); strings.Contains(msg, "pass") || strings.Contains(msg, "/hook") {
		t.Errorf("error leaks the URL: %q", msg)
	}
}

func (a *memAttempts) remove(_ context.Context, key string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, key)
	return nil
}

// TestEndpointBackoffMax: an endpoint's BackoffMax caps its retry wait in
// place of the notifier-wide one, however many attempts have failed.
func TestEndpointBackoffMax(t *testing.T) {
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusBadGateway })
	opts := Options{BackoffBase: time.Second, BackoffMax: time.Hour, Rand: fixedRand{1, 1}}.withDefaults()
	for _, tt := range []struct {
		name       string
		backoffMax time.Duration
		want       time.Duration
	}{
		{"notifier-wide cap", 0, time.Hour},
		{"endpoint cap", 3 * time.Second, 3 * time.Second},
		{"endpoint cap below the base", time.Millisecond, time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log := &memAttempts{m: map[string]attemptRecord{attemptKey("ep", 7): {Attempts: 30}}}
			h := testHandler(Endpoint{Name: "ep", URL: rc.srv.URL, MaxAttempts: 1000, BackoffMax: tt.backoffMax}, opts, log)
			msg := &fakeMsg{body: []byte(`{"request_id":"req_1"}`), header: nats.Header{},
				meta: jetstream.MsgMetadata{NumDelivered: 31, Timestamp: opts.Clock.Now(), Stream: "LLMPROXY", Sequence: jetstream.SequencePair{Stream: 7}}}
			h.handle(context.Background(), msg)
			if !msg.nakked || msg.nakDelay != tt.want {
				t.Fatalf("nakked %v with delay %s after 31 failed attempts, want the cap %s", msg.nakked, msg.nakDelay, tt.want)
			}
		})
	}
}

// TestDeadLetterWithAnUnconfirmedAckIsNotPostedAgain: a notifier killed
// after storing an event's dead letter but before the server had its ack
// (here: the ack is not confirmed) leaves the event's record saying it
// was given up on; its redelivery stores the dead letter again and acks,
// without POSTing the event again.
func TestDeadLetterWithAnUnconfirmedAckIsNotPostedAgain(t *testing.T) {
	now := time.Date(2026, 1, 14, 10, 30, 0, 0, time.UTC)
	var mu sync.Mutex
	posts := 0
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) int {
		mu.Lock()
		posts++
		mu.Unlock()
		return 500
	})
	log := &memAttempts{m: map[string]attemptRecord{attemptKey("ep", 7): {Attempts: 2}}}
	opts := Options{BackoffBase: time.Millisecond, BackoffMax: 4 * time.Millisecond, Clock: fixedClock{now}, Rand: fixedRand{1, 1}}.withDefaults()
	h := testHandler(Endpoint{Name: "ep", URL: rc.srv.URL, MaxAttempts: 3, MaxAge: time.Hour}, opts, log)
	var letters []DeadLetter
	h.deadLetter = func(_ context.Context, d DeadLetter) error {
		letters = append(letters, d)
		return nil
	}
	msg := func(delivered uint64, ackErr error) *fakeMsg {
		return &fakeMsg{body: []byte(`{"request_id":"req_1"}`), header: nats.Header{}, ackErr: ackErr,
			meta: jetstream.MsgMetadata{NumDelivered: delivered, Timestamp: now, Stream: "LLMPROXY", Sequence: jetstream.SequencePair{Stream: 7}}}
	}
	h.handle(context.Background(), msg(3, errors.New("ack not confirmed")))
	if posts != 1 || len(letters) != 1 || letters[0].Reason != ReasonMaxAttempts {
		t.Fatalf("last attempt: %d posts, dead letters %+v", posts, letters)
	}
	r, ok, _ := log.get(context.Background(), attemptKey("ep", 7))
	if !ok || r.Pending == nil {
		t.Fatalf("record after an unconfirmed ack: %+v (found %v), want the pending dead letter", r, ok)
	}

	again := msg(4, nil)
	h.handle(context.Background(), again)
	if posts != 1 {
		t.Fatalf("the dead-lettered event was POSTed again (%d posts)", posts)
	}
	if len(letters) != 2 || letters[1].Attempts != 3 || !again.acked {
		t.Fatalf("redelivery: dead letters %+v, acked %v; want the dead letter stored again and the event acked", letters, again.acked)
	}
	if _, ok, _ := log.get(context.Background(), attemptKey("ep", 7)); ok {
		t.Fatal("record kept once the ack was confirmed")
	}
}
