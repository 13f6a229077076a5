package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
)

// TestReadyzSaysEventsAreStalled: a gateway whose events cannot be
// published while NATS answers (here: no stream takes them, as when the
// server's store write failed) says so on /readyz once publishing has
// failed for its limit, and serves on, its events in the outbox.
func TestReadyzSaysEventsAreStalled(t *testing.T) {
	js := eventstest.JetStream(t)
	// Without the event stream every publish fails while NATS answers.
	if err := js.DeleteStream(context.Background(), events.StreamName); err != nil {
		t.Fatal(err)
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	// And, once the request is in, a store of the process's own that is
	// not ready: /readyz names both.
	var storeDown atomic.Bool
	ready := func(context.Context) error {
		if storeDown.Load() {
			return errors.New("redis: down")
		}
		return nil
	}
	g, err := New(Options{Config: parseConfig(t, "backends: [{url: \""+backend.URL+"\"}]\n"), JetStream: js, OutboxDir: t.TempDir(), Ready: ready})
	if err != nil {
		t.Fatal(err)
	}
	g.eventStall = 200 * time.Millisecond
	g.Start(context.Background())
	defer func() { _ = g.Close(context.Background()) }()
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()

	if resp, body := do(t, "GET", srv.URL+"/readyz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("/readyz before any event: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, nil); resp.StatusCode != 200 {
		t.Fatalf("request: %d %s", resp.StatusCode, body)
	}
	storeDown.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, body := do(t, "GET", srv.URL+"/readyz", "", nil)
		if resp.StatusCode == 503 && strings.Contains(string(body), "events have not been published for") && strings.Contains(string(body), "redis: down") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with every publish failing: %d %s", resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := g.EventsReady(); err == nil {
		t.Fatal("EventsReady: nil, want the stall")
	}
}
