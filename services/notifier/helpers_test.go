package notifier

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// testOptions are short timings for tests.
func testOptions() Options {
	return Options{
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		BackoffBase: 10 * time.Millisecond,
		BackoffMax:  50 * time.Millisecond,
		Concurrency: 8,
	}
}

// publish publishes n events and returns their bodies by request id.
func publish(t testing.TB, js jetstream.JetStream, prefix string, n int) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make(map[string][]byte, n)
	for i := range n {
		e := events.RequestCompleted{
			RequestID:   fmt.Sprintf("%s-%04d", prefix, i),
			UserID:      "user_alice",
			APIKey:      "sk-llmproxy-…t123",
			RequestBody: []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`),
			Usage:       events.Usage{PromptTokens: 15, CompletionTokens: 42, TotalTokens: 57},
			Endpoint:    "/v1/chat/completions",
			Timestamp:   time.Now().UTC(),
			StatusCode:  200,
			KeyID:       "key1",
		}
		body, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, events.Subject(e.KeyID), body, jetstream.WithMsgID(e.RequestID)); err != nil {
			t.Fatalf("publish: %v", err)
		}
		out[e.RequestID] = body
	}
	return out
}

// call is one request a receiver got.
type call struct {
	id     string
	header http.Header
	body   []byte
	at     time.Time
	status int
}

// receiver is an httptest webhook receiver whose answer is chosen per call.
type receiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	calls    []call
	inflight int
	// respond picks the status of the n-th call (0-based); nil means 200.
	respond func(n int, w http.ResponseWriter, r *http.Request) int
}

func newReceiver(t testing.TB, respond func(n int, w http.ResponseWriter, r *http.Request) int) *receiver {
	rc := &receiver{respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.calls)
		rc.calls = append(rc.calls, call{id: r.Header.Get(EventIDHeader), header: r.Header.Clone(), body: body, at: time.Now()})
		rc.inflight++
		respond := rc.respond
		rc.mu.Unlock()
		status := http.StatusOK
		if respond != nil {
			status = respond(n, w, r)
		}
		rc.mu.Lock()
		rc.calls[n].status = status
		rc.inflight--
		rc.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) setRespond(f func(n int, w http.ResponseWriter, r *http.Request) int) {
	rc.mu.Lock()
	rc.respond = f
	rc.mu.Unlock()
}

func (rc *receiver) snapshot() []call {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]call(nil), rc.calls...)
}

// delivered counts the 2xx calls per event id.
func (rc *receiver) delivered() map[string]int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	m := map[string]int{}
	for _, c := range rc.calls {
		if c.status >= 200 && c.status < 300 {
			m[c.id]++
		}
	}
	return m
}

func (rc *receiver) inFlight() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.inflight
}

// runNotifier starts a Notifier and returns a function that stops it and
// returns Run's error; the stop also runs at cleanup.
func runNotifier(t testing.TB, js jetstream.JetStream, eps []Endpoint, opts Options) func() error {
	t.Helper()
	n, err := New(js, eps, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = fmt.Errorf("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settled reports whether the endpoint's consumer has nothing pending or
// unacknowledged.
func settled(t testing.TB, js jetstream.JetStream, endpoint string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, events.StreamName, DurableName(endpoint))
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false
	}
	return info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0
}

// metricValue reads one counter or gauge sample from reg; labels are
// name/value pairs.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if got[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

func listDLQ(t testing.TB, js jetstream.JetStream, f DLQFilter) []DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dl, err := ListDLQ(ctx, js, f)
	if err != nil {
		t.Fatalf("ListDLQ: %v", err)
	}
	return dl
}

// waitMetric polls until a metric reaches want: metrics are updated just
// after the ack, so a receiver can see the delivery a moment earlier.
func waitMetric(t testing.TB, reg *prometheus.Registry, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := metricValue(t, reg, name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s%v = %v, want %v", name, labels, got, want)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
