package notifier

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

func TestDeliverySignedWithHeaders(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	const secret = "s3cret"
	rc := newReceiver(t, nil)
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	runNotifier(t, js, []Endpoint{{Name: "billing", URL: rc.srv.URL + "/hook", Secret: secret}}, opts)
	sent := publish(t, js, "req", 5)

	waitFor(t, 10*time.Second, "5 deliveries", func() bool { return len(rc.delivered()) == 5 })
	for _, c := range rc.snapshot() {
		want, ok := sent[c.id]
		if !ok {
			t.Fatalf("unknown event id %q", c.id)
		}
		if !bytes.Equal(c.body, want) {
			t.Errorf("%s: body changed in transit:\n got %s\nwant %s", c.id, c.body, want)
		}
		if got := eventIDFromBody(c.body); got != c.id {
			t.Errorf("event id header %q, body request_id %q", c.id, got)
		}
		for k, v := range map[string]string{"Content-Type": "application/json", "User-Agent": UserAgent} {
			if got := c.header.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", c.id, k, got, v)
			}
		}
		sig := c.header.Get(SignatureHeader)
		if err := Verify(secret, sig, c.body, time.Minute); err != nil {
			t.Errorf("%s: signature %q does not verify: %v", c.id, sig, err)
		}
		tampered := bytes.Replace(c.body, []byte(`"total_tokens":57`), []byte(`"total_tokens":5`), 1)
		if err := Verify(secret, sig, tampered, time.Minute); !errors.Is(err, ErrSignatureMismatch) {
			t.Errorf("%s: tampered body: Verify = %v, want mismatch", c.id, err)
		}
	}
	waitMetric(t, reg, 5, "llmproxy_webhook_success_total")
	waitMetric(t, reg, 5, "llmproxy_webhook_deliveries_total", "endpoint", "billing", "outcome", "success")
	waitMetric(t, reg, 5, "llmproxy_webhook_delivery_seconds", "endpoint", "billing")
}

func TestNoSignatureWithoutSecret(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, nil)
	runNotifier(t, js, []Endpoint{{Name: "plain", URL: rc.srv.URL}}, testOptions())
	publish(t, js, "req", 1)
	waitFor(t, 10*time.Second, "delivery", func() bool { return len(rc.delivered()) == 1 })
	if h := rc.snapshot()[0].header.Get(SignatureHeader); h != "" {
		t.Errorf("signature header without a secret: %q", h)
	}
}

func TestRetriesUntilDeliveredOnce(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n < 3 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	runNotifier(t, js, []Endpoint{{Name: "flaky", URL: rc.srv.URL, MaxAttempts: 10}}, opts)
	publish(t, js, "req", 1)

	waitFor(t, 10*time.Second, "delivery after retries", func() bool { return len(rc.delivered()) == 1 })
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, "flaky") })
	calls := rc.snapshot()
	if len(calls) != 4 {
		t.Fatalf("receiver got %d calls, want 4 (3×503 then 200)", len(calls))
	}
	if d := rc.delivered()["req-0000"]; d != 1 {
		t.Errorf("delivered %d times, want 1", d)
	}
	waitMetric(t, reg, 3, "llmproxy_webhook_retries_total", "endpoint", "flaky")
	if dl := listDLQ(t, js, DLQFilter{}); len(dl) != 0 {
		t.Errorf("dead letters after success: %+v", dl)
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	runNotifier(t, js, []Endpoint{{Name: "limited", URL: rc.srv.URL}}, testOptions())
	publish(t, js, "req", 1)

	waitFor(t, 10*time.Second, "delivery after 429", func() bool { return len(rc.delivered()) == 1 })
	calls := rc.snapshot()
	if len(calls) != 2 {
		t.Fatalf("receiver got %d calls, want 2", len(calls))
	}
	// The backoff alone is at most 50ms here; Retry-After asks for 1s.
	if gap := calls[1].at.Sub(calls[0].at); gap < 900*time.Millisecond {
		t.Errorf("second attempt %s after the 429, want ≥ 1s (Retry-After)", gap)
	}
}

func TestPermanentFailureDeadLettersThenReplay(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) int {
		return http.StatusBadRequest
	})
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	opts.DLQDepthInterval = 20 * time.Millisecond
	// Credentials in the URL stay out of the dead letter, the path's too
	// (Slack and Discord put a webhook's secret there).
	u, _ := url.Parse(rc.srv.URL + "/hook/T0/path-s3cret?token=q-s3cret#frag")
	u.User = url.UserPassword("hookuser", "p-s3cret")
	ep := Endpoint{Name: "billing", URL: u.String(), Secret: "k", MaxAttempts: 10}
	stop := runNotifier(t, js, []Endpoint{ep}, opts)
	sent := publish(t, js, "req", 1)

	var dl []DeadLetter
	waitFor(t, 10*time.Second, "dead letter", func() bool {
		dl = listDLQ(t, js, DLQFilter{Endpoint: "billing"})
		return len(dl) == 1
	})
	d := dl[0]
	if d.Reason != ReasonPermanent || d.LastStatus != http.StatusBadRequest || d.Attempts != 1 {
		t.Errorf("dead letter = reason %q status %d attempts %d; want %q 400 1", d.Reason, d.LastStatus, d.Attempts, ReasonPermanent)
	}
	if d.Endpoint != "billing" || d.URL != rc.srv.URL || d.EventID != "req-0000" || d.FailedAt.IsZero() || d.Seq == 0 {
		t.Errorf("dead letter fields: %+v", d)
	}
	if raw, _ := json.Marshal(d); bytes.Contains(raw, []byte("s3cret")) {
		t.Errorf("dead letter holds a credential: %s", raw)
	}
	if !strings.Contains(d.LastError, "400") {
		t.Errorf("last_error %q does not name the status", d.LastError)
	}
	if !bytes.Equal(d.Event, sent["req-0000"]) {
		t.Errorf("dead letter event = %s, want the original body", d.Event)
	}
	if n := len(rc.snapshot()); n != 1 {
		t.Errorf("permanent failure attempted %d times, want 1", n)
	}
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, "billing") })
	waitFor(t, 10*time.Second, "dlq depth gauge", func() bool { return metricValue(t, reg, "llmproxy_webhook_dlq_depth") == 1 })
	waitMetric(t, reg, 1, "llmproxy_webhook_dlq_total", "endpoint", "billing")
	waitMetric(t, reg, 1, "llmproxy_webhook_failure_total")
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Still broken: the dead letter stays.
	if n, err := Replay(ctx, js, []Endpoint{ep}, DLQFilter{}); n != 0 || err == nil {
		t.Fatalf("Replay to a broken receiver = %d, %v; want 0 and an error", n, err)
	}
	// Unknown endpoint: stays.
	if n, err := Replay(ctx, js, nil, DLQFilter{ID: "req-0000"}); n != 0 || err == nil {
		t.Fatalf("Replay without the endpoint = %d, %v; want 0 and an error", n, err)
	}
	if n, err := Replay(ctx, js, []Endpoint{ep}, DLQFilter{ID: "no-such-id"}); n != 0 || err == nil {
		t.Fatalf("Replay of an unknown id = %d, %v; want 0 and an error", n, err)
	}
	if len(listDLQ(t, js, DLQFilter{})) != 1 {
		t.Fatal("dead letter removed by a failed replay")
	}

	rc.setRespond(nil) // fixed
	n, err := Replay(ctx, js, []Endpoint{ep}, DLQFilter{ID: "req-0000"})
	if err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1, nil", n, err)
	}
	if dl := listDLQ(t, js, DLQFilter{}); len(dl) != 0 {
		t.Errorf("dead letter still there after replay: %+v", dl)
	}
	calls := rc.snapshot()
	last := calls[len(calls)-1]
	if last.status != http.StatusOK || last.id != "req-0000" || !bytes.Equal(last.body, sent["req-0000"]) {
		t.Errorf("replayed call: id %q status %d body %s", last.id, last.status, last.body)
	}
	if err := Verify("k", last.header.Get(SignatureHeader), last.body, time.Minute); err != nil {
		t.Errorf("replayed delivery signature: %v", err)
	}
	// Replay went to the configured URL, credentials included.
	if user, pass, ok := (&http.Request{Header: last.header}).BasicAuth(); !ok || user != "hookuser" || pass != "p-s3cret" {
		t.Errorf("replayed delivery without the URL's credentials: %q %q %v", user, pass, ok)
	}
}

func TestMaxAttemptsDeadLetters(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusInternalServerError })
	runNotifier(t, js, []Endpoint{{Name: "down", URL: rc.srv.URL, MaxAttempts: 3}}, testOptions())
	publish(t, js, "req", 2)

	var dl []DeadLetter
	waitFor(t, 10*time.Second, "2 dead letters", func() bool {
		dl = listDLQ(t, js, DLQFilter{Endpoint: "down"})
		return len(dl) == 2
	})
	for _, d := range dl {
		if d.Reason != ReasonMaxAttempts || d.Attempts != 3 || d.LastStatus != 500 {
			t.Errorf("dead letter %s: reason %q attempts %d status %d; want %q 3 500", d.EventID, d.Reason, d.Attempts, d.LastStatus, ReasonMaxAttempts)
		}
	}
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, "down") })
	if n := len(rc.snapshot()); n != 6 {
		t.Errorf("receiver got %d calls, want 6 (3 per event)", n)
	}
	if one := listDLQ(t, js, DLQFilter{ID: "req-0001"}); len(one) != 1 || one[0].EventID != "req-0001" {
		t.Errorf("ListDLQ by id = %+v", one)
	}
	if other := listDLQ(t, js, DLQFilter{Endpoint: "elsewhere"}); len(other) != 0 {
		t.Errorf("ListDLQ of another endpoint = %+v", other)
	}
}

func TestSlowEndpointDoesNotDelayFastOne(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	slow := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		select {
		case <-time.After(5 * time.Second):
		case <-release:
		}
		return http.StatusOK
	})
	fast := newReceiver(t, nil)
	opts := testOptions()
	opts.Concurrency = 4
	runNotifier(t, js, []Endpoint{
		{Name: "slow", URL: slow.srv.URL, Timeout: 10 * time.Second},
		{Name: "fast", URL: fast.srv.URL},
	}, opts)
	// Cleanups run last-in first-out: the slow calls end before the
	// notifier is stopped and drains them.
	t.Cleanup(unblock)
	const n = 100
	start := time.Now()
	publish(t, js, "req", n)

	waitFor(t, 4*time.Second, "all events at the fast endpoint", func() bool { return len(fast.delivered()) == n })
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("fast endpoint took %s", took)
	}
	if got := len(slow.delivered()); got != 0 {
		t.Errorf("slow endpoint finished %d deliveries already", got)
	}
}

func TestInstancesShareTheWork(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		time.Sleep(2 * time.Millisecond)
		return http.StatusOK
	})
	ep := []Endpoint{{Name: "shared", URL: rc.srv.URL}}
	for _, name := range []string{"a", "b"} {
		opts := testOptions()
		opts.Concurrency = 4
		opts.HTTPClient = &http.Client{Transport: tagTransport{name}}
		runNotifier(t, js, ep, opts)
	}
	// Both are pulling before the first event arrives.
	waitFor(t, 10*time.Second, "consumer with two pullers", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, events.StreamName, DurableName("shared"))
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumWaiting >= 2
	})
	const n = 200
	publish(t, js, "req", n)
	waitFor(t, 20*time.Second, "all events", func() bool { return len(rc.delivered()) == n })
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, "shared") })

	per := map[string]int{}
	for _, c := range rc.snapshot() {
		per[c.header.Get("X-Test-Instance")]++
	}
	for id, times := range rc.delivered() {
		if times != 1 {
			t.Errorf("%s delivered %d times", id, times)
		}
	}
	if per["a"] == 0 || per["b"] == 0 || per["a"]+per["b"] != n {
		t.Errorf("work split a=%d b=%d, want both > 0 and a sum of %d", per["a"], per["b"], n)
	}
}

// tagTransport marks the requests of one notifier instance.
type tagTransport struct{ name string }

func (tt tagTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Instance", tt.name)
	return http.DefaultTransport.RoundTrip(r)
}

func TestStopMidDeliveryThenRestartDeliversAll(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		time.Sleep(50 * time.Millisecond)
		return http.StatusOK
	})
	ep := []Endpoint{{Name: "restart", URL: rc.srv.URL, Timeout: time.Second}}
	opts := testOptions()
	opts.Concurrency = 4
	// A pull in flight at shutdown is redelivered after the ack wait.
	opts.AckWait = 3 * time.Second
	const n = 80
	sent := publish(t, js, "req", n)

	stopA := runNotifier(t, js, ep, opts)
	waitFor(t, 10*time.Second, "first deliveries", func() bool { return len(rc.snapshot()) >= 8 && rc.inFlight() > 0 })
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if f := rc.inFlight(); f != 0 {
		t.Errorf("Run returned with %d deliveries still in flight", f)
	}
	if got := len(rc.delivered()); got >= n {
		t.Fatalf("all %d delivered before the stop; the test proves nothing", got)
	}

	runNotifier(t, js, ep, opts)
	waitFor(t, 20*time.Second, "every event after restart", func() bool { return len(rc.delivered()) == n })
	for id := range sent {
		if rc.delivered()[id] == 0 {
			t.Errorf("%s never delivered", id)
		}
	}
}

// TestRestartUsesNoAttempt: events a stopping notifier hands back, or whose
// pull was in flight, are delivered again as often as before even with a
// single attempt allowed (usage_hook with retry: 0); none is dead-lettered
// unPOSTed.
func TestRestartUsesNoAttempt(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		time.Sleep(50 * time.Millisecond)
		return http.StatusOK
	})
	ep := []Endpoint{{Name: "usage_hook", URL: rc.srv.URL, Timeout: time.Second, MaxAttempts: 1}}
	opts := testOptions()
	opts.Concurrency = 4
	opts.AckWait = 3 * time.Second
	const n = 60
	sent := publish(t, js, "req", n)

	for round := 0; round < 3 && len(rc.delivered()) < n/2; round++ {
		stop := runNotifier(t, js, ep, opts)
		before := len(rc.snapshot())
		waitFor(t, 10*time.Second, "deliveries", func() bool { return len(rc.snapshot()) >= before+6 && rc.inFlight() > 0 })
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(rc.delivered()); got >= n {
		t.Fatalf("all %d delivered before the last stop; the test proves nothing", got)
	}
	runNotifier(t, js, ep, opts)
	waitFor(t, 20*time.Second, "every event delivered", func() bool { return len(rc.delivered()) == n })
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, "usage_hook") })
	for id := range sent {
		if rc.delivered()[id] == 0 {
			t.Errorf("%s never delivered", id)
		}
	}
	if dl := listDLQ(t, js, DLQFilter{}); len(dl) != 0 {
		t.Errorf("%d events dead-lettered, first %+v", len(dl), dl[0])
	}
}

// downEndpoint is an endpoint whose receiver always answers 503, allowed
// four attempts 300 ms apart, and one event published for it.
func downEndpoint(t *testing.T, js jetstream.JetStream) (*receiver, []Endpoint, Options) {
	t.Helper()
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusServiceUnavailable })
	opts := testOptions()
	opts.BackoffBase, opts.BackoffMax = 300*time.Millisecond, 300*time.Millisecond
	publish(t, js, "req", 1)
	return rc, []Endpoint{{Name: "down", URL: rc.srv.URL, MaxAttempts: 4}}, opts
}

// TestAttemptsSurviveRestart: the failed attempts made before a restart
// count after it; an event gets MaxAttempts POSTs in all.
func TestAttemptsSurviveRestart(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc, ep, opts := downEndpoint(t, js)

	stop := runNotifier(t, js, ep, opts)
	waitFor(t, 10*time.Second, "two attempts", func() bool { return len(rc.snapshot()) >= 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	runNotifier(t, js, ep, opts)
	var dl []DeadLetter
	waitFor(t, 20*time.Second, "a dead letter", func() bool {
		dl = listDLQ(t, js, DLQFilter{Endpoint: "down"})
		return len(dl) == 1
	})
	if calls := len(rc.snapshot()); dl[0].Attempts != 4 || calls != 4 || dl[0].Reason != ReasonMaxAttempts {
		t.Errorf("dead letter after %d attempts (%s), receiver got %d calls; want 4", dl[0].Attempts, dl[0].Reason, calls)
	}
}

// TestAttemptsBucketLost: the attempts bucket lost while the notifier runs
// (a NATS server back without its store) is opened again at the next
// attempt, so the event still gets MaxAttempts POSTs, not more.
func TestAttemptsBucketLost(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	rc, ep, opts := downEndpoint(t, js)

	runNotifier(t, js, ep, opts)
	waitFor(t, 10*time.Second, "an attempt", func() bool { return len(rc.snapshot()) >= 1 })
	if err := js.DeleteKeyValue(context.Background(), AttemptsBucket); err != nil {
		t.Fatal(err)
	}
	var dl []DeadLetter
	waitFor(t, 20*time.Second, "a dead letter", func() bool {
		dl = listDLQ(t, js, DLQFilter{Endpoint: "down"})
		return len(dl) == 1
	})
	if calls := len(rc.snapshot()); dl[0].Attempts != 4 || calls > 5 || dl[0].Reason != ReasonMaxAttempts {
		t.Errorf("dead letter after %d attempts (%s), receiver got %d calls; want 4 (5 if the first record was lost)", dl[0].Attempts, dl[0].Reason, calls)
	}
}

func TestNewRejectsBadEndpoints(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	tests := []struct {
		name string
		eps  []Endpoint
		opts Options
	}{
		{"no name", []Endpoint{{URL: "http://x"}}, Options{}},
		{"bad url", []Endpoint{{Name: "a", URL: "ftp://x"}}, Options{}},
		{"duplicate durable", []Endpoint{{Name: "a.b", URL: "http://x"}, {Name: "a_b", URL: "http://y"}}, Options{}},
		{"ack wait below timeout", []Endpoint{{Name: "a", URL: "http://x", Timeout: 5 * time.Second}}, Options{AckWait: time.Second}},
		{"name too long for a consumer", []Endpoint{{Name: strings.Repeat("n", 247), URL: "http://x"}}, Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(js, tt.eps, tt.opts); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

func TestDurableName(t *testing.T) {
	for in, want := range map[string]string{
		"billing":            "notifier-billing",
		"usage_hook":         "notifier-usage_hook",
		"billing.internal/x": "notifier-billing_internal_x",
		"a b*>c":             "notifier-a_b__c",
	} {
		if got := DurableName(in); got != want {
			t.Errorf("DurableName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDeadLetterJSONShape(t *testing.T) {
	d := DeadLetter{Seq: 9, Endpoint: "e", URL: "http://x", EventID: "r", Reason: ReasonPermanent,
		Attempts: 1, LastStatus: 400, LastError: "HTTP 400", FailedAt: time.Unix(0, 0).UTC(), Event: json.RawMessage(`{"a":1}`)}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"endpoint":"e","url":"http://x","event_id":"r","reason":"permanent_failure","attempts":1,"last_status":400,"last_error":"HTTP 400","failed_at":"1970-01-01T00:00:00Z","event":{"a":1}}`
	if string(b) != want {
		t.Errorf("dead letter JSON\n got %s\nwant %s", b, want)
	}
	if got := rawEvent([]byte("not json")); string(got) != `"not json"` {
		t.Errorf("rawEvent of a non-JSON body = %s", got)
	}
}

// attemptsStreamInfo returns the state of the stream under AttemptsBucket.
func attemptsStreamInfo(t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, attemptsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestAttemptRecordsRemovedWhenSettled: an event's attempt record goes once
// the event is delivered or dead-lettered, with nothing left behind, so a
// long outage at a high event rate does not leave a key per event for
// max_age and an hour; the bucket is bounded all the same.
func TestAttemptRecordsRemovedWhenSettled(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	// Every event fails twice, then two are delivered and two run out of
	// attempts.
	var mu sync.Mutex
	failed := map[string]int{}
	rc := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		id := r.Header.Get(EventIDHeader)
		mu.Lock()
		defer mu.Unlock()
		failed[id]++
		if failed[id] > 2 && (id == "req-0000" || id == "req-0001") {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	runNotifier(t, js, []Endpoint{{Name: "flaky", URL: rc.srv.URL, MaxAttempts: 3}}, testOptions())
	sent := publish(t, js, "req", 4)
	waitFor(t, 20*time.Second, "consumer settled", func() bool { return settled(t, js, "flaky") && len(rc.delivered()) == 2 })
	if dl := listDLQ(t, js, DLQFilter{}); len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	if len(rc.snapshot()) < 2*len(sent) {
		t.Fatalf("receiver got %d calls; the events were not retried", len(rc.snapshot()))
	}
	info := attemptsStreamInfo(t, js)
	if info.State.Msgs != 0 || info.State.NumSubjects != 0 {
		t.Errorf("attempts bucket holds %d records (%d keys) after every event settled, want none", info.State.Msgs, info.State.NumSubjects)
	}
	if info.Config.MaxBytes != attemptsMaxBytes {
		t.Errorf("attempts bucket max bytes %d, want %d", info.Config.MaxBytes, attemptsMaxBytes)
	}
}

// TestAttemptsBucketOfEarlierReleaseBounded: a bucket made without a bound
// (by an earlier release) gets one, and keeps a longer TTL another notifier
// set.
func TestAttemptsBucketOfEarlierReleaseBounded(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: AttemptsBucket, History: 1, TTL: 25 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := openAttempts(ctx, js, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	info := attemptsStreamInfo(t, js)
	if info.Config.MaxBytes != attemptsMaxBytes || info.Config.MaxAge != 25*time.Hour {
		t.Errorf("bucket max bytes %d, TTL %s; want %d, 25h", info.Config.MaxBytes, info.Config.MaxAge, attemptsMaxBytes)
	}
}

// TestAttemptsBucketOnASmallStore: a server whose JetStream store cannot
// reserve the bucket's bound (max_file_store under 256 MiB) gets a bucket
// with a smaller one, and the notifier starts.
func TestAttemptsBucketOnASmallStore(t *testing.T) {
	t.Parallel()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxStore: 200 << 20, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	js := eventstest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := openAttempts(ctx, js, 2*time.Hour); err != nil {
		t.Fatalf("open on a 200 MiB store: %v", err)
	}
	if info := attemptsStreamInfo(t, js); info.Config.MaxBytes != attemptsBounds[1] {
		t.Errorf("bucket max bytes %d, want %d", info.Config.MaxBytes, attemptsBounds[1])
	}
}

// TestDeadLetterStoredLaterWithoutPostingAgain: an event given up on while
// LLMPROXY_DLQ cannot be written is not POSTed again on every retry of the
// dead letter's write: the receiver gets it once, and the dead letter is
// stored once the stream is back, with what the attempt found.
func TestDeadLetterStoredLaterWithoutPostingAgain(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, events.DLQStreamName); err != nil {
		t.Fatal(err)
	}
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusBadRequest })
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	runNotifier(t, js, []Endpoint{{Name: "billing", URL: rc.srv.URL, MaxAttempts: 10}}, opts)
	publish(t, js, "req", 1)

	waitFor(t, 10*time.Second, "three failed dead-letter writes", func() bool {
		return metricValue(t, reg, "llmproxy_webhook_deliveries_total", "endpoint", "billing", "outcome", outcomeDLQError) >= 3
	})
	if n := len(rc.snapshot()); n != 1 {
		t.Fatalf("receiver got the event %d times while its dead letter could not be stored; want 1", n)
	}

	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	var dl []DeadLetter
	waitFor(t, 10*time.Second, "dead letter", func() bool {
		dl = listDLQ(t, js, DLQFilter{Endpoint: "billing"})
		return len(dl) == 1
	})
	if d := dl[0]; d.EventID != "req-0000" || d.Reason != ReasonPermanent || d.Attempts != 1 || d.LastStatus != http.StatusBadRequest {
		t.Errorf("dead letter %+v; want req-0000, %s after 1 attempt, 400", d, ReasonPermanent)
	}
	waitFor(t, 10*time.Second, "consumer settled", func() bool { return settled(t, js, "billing") })
	if n := len(rc.snapshot()); n != 1 {
		t.Errorf("receiver got the event %d times; want 1", n)
	}
	if info := attemptsStreamInfo(t, js); info.State.Msgs != 0 {
		t.Errorf("attempt records left after the dead letter was stored: %d", info.State.Msgs)
	}
}

// TestUnauthenticatedEventsSentOnlyToEndpointsThatAsk: the events of
// requests refused without a valid key, which any client can make as fast
// as the gateway refuses it, go only to an endpoint with Unauthenticated
// set; the others acknowledge them unsent and count them.
func TestUnauthenticatedEventsSentOnlyToEndpointsThatAsk(t *testing.T) {
	t.Parallel()
	js := eventstest.JetStream(t)
	billing, audit := newReceiver(t, nil), newReceiver(t, nil)
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	runNotifier(t, js, []Endpoint{
		{Name: "billing", URL: billing.srv.URL},
		{Name: "audit", URL: audit.srv.URL, Unauthenticated: true},
	}, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		e := events.RequestCompleted{RequestID: fmt.Sprintf("refused-%d", i), KeyID: events.UnauthenticatedKeyID,
			Endpoint: "/v1/chat/completions", Timestamp: time.Now().UTC(), StatusCode: 401, Error: "invalid_api_key"}
		body, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, events.Subject(e.KeyID), body, jetstream.WithMsgID(e.RequestID)); err != nil {
			t.Fatal(err)
		}
	}
	sent := publish(t, js, "served", 2)
	waitFor(t, 10*time.Second, "the audit endpoint's 5 deliveries", func() bool { return len(audit.delivered()) == 5 })
	waitFor(t, 10*time.Second, "the billing endpoint's consumer to settle", func() bool { return settled(t, js, "billing") })
	got := billing.delivered()
	if len(got) != len(sent) {
		t.Fatalf("billing got %v, want the served requests' %d events alone", got, len(sent))
	}
	for id := range got {
		if _, ok := sent[id]; !ok {
			t.Errorf("billing got %s", id)
		}
	}
	waitMetric(t, reg, 3, "llmproxy_webhook_skipped_total", "endpoint", "billing")
	if n := metricValue(t, reg, "llmproxy_webhook_skipped_total", "endpoint", "audit"); n != 0 {
		t.Errorf("audit skipped %v events", n)
	}
}

// TestEndpointTLSConfig: an endpoint's TLSConfig (a private CA, a client
// certificate) reaches a receiver that verifies its clients; one without it
// cannot deliver there.
func TestEndpointTLSConfig(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "notifier"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, _ := x509.ParseCertificate(der)
	var got atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Add(1) }))
	pool := x509.NewCertPool()
	pool.AddCert(clientCert)
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	js := eventstest.JetStream(t)
	reg := prometheus.NewRegistry()
	opts := testOptions()
	opts.Registerer = reg
	runNotifier(t, js, []Endpoint{
		{Name: "mtls", URL: srv.URL, TLSConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}},
		{Name: "plain", URL: srv.URL, MaxAttempts: 1},
	}, opts)
	publish(t, js, "req", 1)
	waitFor(t, 10*time.Second, "the delivery with the client certificate", func() bool { return got.Load() == 1 })
	waitMetric(t, reg, 1, "llmproxy_webhook_dlq_total", "endpoint", "plain")
	if n := got.Load(); n != 1 {
		t.Fatalf("the receiver got %d deliveries, want the one with the certificate", n)
	}
}
