package notifier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestConsumerTakesOverFromLegacyName: an endpoint renamed from its former
// default name (which held the URL's path) continues after the ack floor
// of the old name's consumer, which is deleted, instead of receiving every
// retained event again; the token in the old name and the URL reaches
// neither the log, nor the metrics, nor a consumer. A restart keeps the
// consumer where it started.
func TestConsumerTakesOverFromLegacyName(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const (
		token  = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
		legacy = "127-0-0-1-api-webhooks-123456789-abcdefghijklmnopqrstuv"
		n, k   = 20, 8
	)
	publish(t, js, "req", n)

	// The notifier of the former release, by hand: the first k events
	// acknowledged under the legacy name.
	old, err := js.CreateConsumer(ctx, events.StreamName, consumerConfig(Endpoint{Name: legacy}, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := old.Fetch(k)
	if err != nil {
		t.Fatal(err)
	}
	for msg := range batch.Messages() {
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := old.Info(ctx); err != nil || info.AckFloor.Stream != k {
		t.Fatalf("legacy consumer's ack floor: %+v, %v; want %d", info, err, k)
	}

	rc := newReceiver(t, nil)
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Registerer = reg
	ep := []Endpoint{{Name: "127-0-0-1-3fa9c2d1", LegacyName: legacy, URL: rc.srv.URL + "/api/webhooks/123456789/" + token}}
	stop := runNotifier(t, js, ep, opts)
	waitFor(t, 10*time.Second, "the events after the ack floor", func() bool { return len(rc.delivered()) >= n-k })
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, ep[0].Name) })
	if _, err := js.Consumer(ctx, events.StreamName, DurableName(legacy)); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("legacy consumer after the take-over: %v, want not found", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	runNotifier(t, js, ep, opts)
	publish(t, js, "late", 2)
	waitFor(t, 10*time.Second, "the events after the restart", func() bool { return len(rc.delivered()) >= n-k+2 })
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, ep[0].Name) })
	got := rc.delivered()
	for i := range n {
		id := fmt.Sprintf("req-%04d", i)
		if want := min(i/k, 1); got[id] != want {
			t.Errorf("%s delivered %d times, want %d (ack floor %d)", id, got[id], want, k)
		}
	}
	if len(got) != n-k+2 {
		t.Errorf("%d events delivered, want %d: %v", len(got), n-k+2, got)
	}

	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	var names bytes.Buffer
	for name := range stream.ConsumerNames(ctx).Name() {
		fmt.Fprintln(&names, name)
		if c, err := js.Consumer(ctx, events.StreamName, name); err == nil {
			fmt.Fprintln(&names, c.CachedInfo().Config.Description)
		}
	}
	for what, text := range map[string]string{"log": logs.String(), "metrics": rec.Body.String(), "consumers": names.String()} {
		if !strings.Contains(text, ep[0].Name) {
			t.Errorf("the %s never name the endpoint; the check proves nothing:\n%s", what, text)
		}
		if l := strings.ToLower(text); strings.Contains(l, "abcdefghijklm") || strings.Contains(l, "123456789") {
			t.Errorf("the %s hold the URL's token:\n%s", what, text)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

var _ io.Writer = (*syncBuffer)(nil)

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReplayByLegacyName: a dead letter recorded under an endpoint's former
// default name is replayed to the endpoint.
func TestReplayByLegacyName(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const legacy = "127-0-0-1-hook-t0k3n"
	d := DeadLetter{Endpoint: legacy, EventID: "req-0000", Reason: ReasonPermanent, Attempts: 1, FailedAt: time.Now(), Event: []byte(`{"request_id":"req-0000"}`)}
	if err := publishDeadLetter(ctx, js, d); err != nil {
		t.Fatal(err)
	}
	rc := newReceiver(t, nil)
	ep := Endpoint{Name: "127-0-0-1-3fa9c2d1", LegacyName: legacy, URL: rc.srv.URL + "/hook/t0k3n"}
	if n, err := Replay(ctx, js, []Endpoint{ep}, DLQFilter{}); n != 1 || err != nil {
		t.Fatalf("Replay = %d, %v; want 1, nil", n, err)
	}
	if got := rc.delivered(); got["req-0000"] != 1 {
		t.Errorf("delivered %v", got)
	}
	if dl := listDLQ(t, js, DLQFilter{}); len(dl) != 0 {
		t.Errorf("dead letter still there after replay: %+v", dl)
	}
}

// TestLegacyNameOfALiveEndpointIgnored: a legacy name whose consumer feeds
// another endpoint is not taken over.
func TestLegacyNameOfALiveEndpointIgnored(t *testing.T) {
	t.Parallel()
	n, err := New(eventstest.JetStream(t), []Endpoint{
		{Name: "a.b", URL: "http://x"},
		{Name: "c", LegacyName: "a_b", URL: "http://y"},
		{Name: "d", LegacyName: "gone", URL: "http://z"},
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if eps := n.Endpoints(); eps[1].LegacyName != "" || eps[2].LegacyName != "gone" {
		t.Errorf("legacy names %q, %q; want \"\", \"gone\"", eps[1].LegacyName, eps[2].LegacyName)
	}
}

// TestConsumerRecreatedAfterItVanished: an endpoint whose consumer is
// deleted gets a new one and keeps receiving events while the other
// endpoint carries on; after the stream and every consumer vanished (a NATS
// server that restarted with an empty store) and the stream came back,
// both endpoints receive the next event. The notifier is never restarted.
func TestConsumerRecreatedAfterItVanished(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	var logs syncBuffer
	opts := testOptions()
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, b := newReceiver(t, nil), newReceiver(t, nil)
	runNotifier(t, js, []Endpoint{{Name: "a", URL: a.srv.URL}, {Name: "b", URL: b.srv.URL}}, opts)
	both := func(id string) func() bool {
		return func() bool { return a.delivered()[id] > 0 && b.delivered()[id] > 0 }
	}
	publish(t, js, "first", 1)
	waitFor(t, 10*time.Second, "the first event at both endpoints", both("first-0000"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, events.StreamName, DurableName("a")); err != nil {
		t.Fatal(err)
	}
	publish(t, js, "second", 1)
	waitFor(t, 10*time.Second, "the second event at both endpoints", both("second-0000"))

	if err := js.DeleteConsumer(ctx, events.StreamName, DurableName("a")); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatal(err)
	}
	// Both endpoints notice while the stream is still missing.
	waitFor(t, 10*time.Second, "both endpoints waiting for the stream", func() bool {
		l := logs.String()
		return strings.Contains(l, `create consumer again" endpoint=a`) && strings.Contains(l, `create consumer again" endpoint=b`)
	})
	eventstest.EnsureStreams(t, js)
	start := time.Now()
	publish(t, js, "third", 1)
	waitFor(t, 10*time.Second, "the third event at both endpoints", both("third-0000"))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("delivered %s after the stream came back", d)
	}
	if w := strings.Count(logs.String(), "level=WARN"); w != strings.Count(logs.String(), `msg="webhook: consumer is gone`) {
		t.Errorf("warnings besides the lost consumers:\n%s", logs.String())
	}
}

// TestConsumerRecreatedAfterAnEmptyRestart: after the NATS server restarted
// with an empty store, once the stream exists again, the endpoint gets a new
// consumer and receives the next event, without a restart of the notifier.
// Nothing tells the client that the consumer is gone: its pull requests go
// unanswered, and it finds out at the first missed heartbeat.
func TestConsumerRecreatedAfterAnEmptyRestart(t *testing.T) {
	t.Parallel()
	srv, js := eventstest.Start(t)
	var logs syncBuffer
	opts := testOptions()
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rc := newReceiver(t, nil)
	stop := runNotifier(t, js, []Endpoint{{Name: "a", URL: rc.srv.URL}}, opts)
	publish(t, js, "first", 1)
	waitFor(t, 10*time.Second, "the first event", func() bool { return rc.delivered()["first-0000"] == 1 })

	eventstest.RestartEmpty(t, srv)
	waitFor(t, 10*time.Second, "the endpoint waiting for the stream", func() bool {
		return strings.Contains(logs.String(), `create consumer again" endpoint=a`)
	})
	eventstest.EnsureStreams(t, js)
	start := time.Now()
	publish(t, js, "second", 1)
	waitFor(t, 10*time.Second, "the second event", func() bool { return rc.delivered()["second-0000"] == 1 })
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("delivered %s after the stream came back", d)
	}
	// Stop before the restarted server's cleanup shuts it down: draining
	// waits for the server.
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestClosedConnectionEndsRun: a closed connection is no lost consumer; Run
// returns an error at once instead of waiting for the consumer.
func TestClosedConnectionEndsRun(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, nil)
	n, err := New(js, []Endpoint{{Name: "a", URL: rc.srv.URL}, {Name: "b", URL: rc.srv.URL}}, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	publish(t, js, "req", 1)
	waitFor(t, 10*time.Second, "delivery", func() bool { return rc.delivered()["req-0000"] == 2 })
	js.Conn().Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run returned nil after the connection closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after the connection closed")
	}
}
