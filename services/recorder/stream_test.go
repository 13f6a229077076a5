package recorder

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
)

func TestReadStream(t *testing.T) {
	js := eventstest.JetStream(t)
	ctx := context.Background()
	if got, err := ReadStream(ctx, js, Filter{}); err != nil || len(got) != 0 {
		t.Fatalf("empty stream: %v, %v", got, err)
	}
	for _, e := range []*events.RequestCompleted{
		event("a", "key1", 200), event("b", "key2", 429), event("c", "key1", 500), event("d", "key1", 200),
	} {
		if e.RequestID == "b" || e.RequestID == "d" {
			e.ClientRequestID = "retry-7" // a client that reused its id
		}
		publishEvent(t, js, e, e.RequestID)
	}
	for _, tt := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"all", Filter{}, []string{"a", "b", "c", "d"}},
		{"request id", Filter{RequestID: "c"}, []string{"c"}},
		{"request id and key", Filter{RequestID: "b", KeyID: "key2"}, []string{"b"}},
		{"request id of another key", Filter{RequestID: "b", KeyID: "key1"}, nil},
		{"key", Filter{KeyID: "key1"}, []string{"a", "c", "d"}},
		{"status", Filter{Status: 429}, []string{"b"}},
		{"limit keeps the newest", Filter{Limit: 2}, []string{"c", "d"}},
		{"limit one", Filter{KeyID: "key1", Limit: 1}, []string{"d"}},
		{"since the future", Filter{Since: time.Now().Add(time.Hour)}, nil},
		{"unknown key", Filter{KeyID: "nobody"}, nil},
		{"unknown request", Filter{RequestID: "zzz"}, nil},
		{"client request id", Filter{ClientRequestID: "retry-7"}, []string{"b", "d"}},
		{"client request id and key", Filter{ClientRequestID: "retry-7", KeyID: "key1"}, []string{"d"}},
		{"client request id is not the gateway's", Filter{ClientRequestID: "a"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			start := time.Now()
			got, err := ReadStream(ctx, js, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if ids := requestIDs(got); !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("got %v, want %v", ids, tt.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("ReadStream took %s: it must not wait for new events", d)
			}
		})
	}
	got, err := ReadStream(ctx, js, Filter{RequestID: "a"})
	if err != nil || len(got) != 1 || got[0].Response == nil || got[0].Response.Content != "hello" || got[0].Usage.TotalTokens != 57 {
		t.Fatalf("ReadStream returned %+v, %v", got, err)
	}
	// Each read's consumer went with it, not a minute later.
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Consumers != 0 {
		t.Fatalf("consumers left after the reads: %+v, %v", info.State.Consumers, err)
	}
}

// TestReadStreamOrdersByArrival: the stream holds events in the order
// their requests ended (a long stream's event comes after those of the
// short requests that arrived after it; an outbox publishes after an
// outage): ReadStream orders and limits them by arrival, as PostgreSQL's
// query does, shows an event the stream holds twice (republished past the
// duplicate window) once, and leaves out a request that arrived before
// Since though stored after it.
func TestReadStreamOrdersByArrival(t *testing.T) {
	js := eventstest.JetStream(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	at := func(id string, ago time.Duration) *events.RequestCompleted {
		e := event(id, "key1", 200)
		e.Timestamp = now.Add(-ago)
		return e
	}
	for _, p := range []struct {
		e     *events.RequestCompleted
		msgID string
	}{
		{at("short1", 8*time.Second), "short1"},
		{at("short2", 6*time.Second), "short2"},
		{at("long", 10*time.Second), "long"},          // arrived first, ended last
		{at("early", 2*time.Hour), "early"},           // from before the window, stored now
		{at("short1", 8*time.Second), "short1-again"}, // republished past the window
		{at("last", time.Second), "last"},
	} {
		publishEvent(t, js, p.e, p.msgID)
	}
	for _, tt := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"default window", Filter{}, []string{"long", "short1", "short2", "last"}},
		{"limit keeps the newest arrivals", Filter{Limit: 2}, []string{"short2", "last"}},
		{"since", Filter{Since: now.Add(-7 * time.Second)}, []string{"short2", "last"}},
		{"whole stream", Filter{Since: now.Add(-3 * time.Hour)}, []string{"early", "long", "short1", "short2", "last"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadStream(ctx, js, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if ids := requestIDs(got); !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("got %v, want %v", ids, tt.want)
			}
		})
	}
}

// TestNewestOrdersAsPostgreSQLDoes: requests that arrived within the same
// microsecond, which PostgreSQL's timestamptz cannot tell apart, are
// ordered by request id, as its query orders them, not by nanoseconds.
func TestNewestOrdersAsPostgreSQLDoes(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 1000, time.UTC)
	evs := []events.RequestCompleted{
		{RequestID: "b", Timestamp: t0},
		{RequestID: "a", Timestamp: t0.Add(500 * time.Nanosecond)},
		{RequestID: "c", Timestamp: t0.Add(-time.Microsecond)},
	}
	if ids := requestIDs(newest(evs, 10)); !reflect.DeepEqual(ids, []string{"c", "a", "b"}) {
		t.Fatalf("order %v, want c, a, b", ids)
	}
}

// TestReadStreamOfLargeEvents: reading a stream of events of several MiB
// asks the server for no more bytes than the client takes: asked for 500
// events at once, the server held them for a client that could not take
// them so fast, grew by hundreds of MiB and cut the connection as a slow
// consumer.
func TestReadStreamOfLargeEvents(t *testing.T) {
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		MaxPayload: 4 << 20, MaxPending: 16 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	js := eventstest.Connect(t, s)
	big := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 3<<20) + `"}]}`)
	for i := range 12 {
		e := event(fmt.Sprintf("r%02d", i), "key1", 200)
		e.RequestBody = big
		publishEvent(t, js, e, e.RequestID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := ReadStream(ctx, js, Filter{Limit: 1})
	if err != nil || len(got) != 1 || got[0].RequestID != "r11" {
		t.Fatalf("got %v, %v", requestIDs(got), err)
	}
	if v, err := s.Varz(nil); err != nil || v.SlowConsumers != 0 {
		t.Fatalf("slow consumers %d (%v): the server held more than the client could take", v.SlowConsumers, err)
	}
}
