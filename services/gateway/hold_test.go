package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
)

// renewCounter is an admitter whose Renew calls are counted and may be
// held up by block.
type renewCounter struct {
	calls atomic.Int64
	block chan struct{}
}

func (r *renewCounter) Admit(context.Context, ledger.AdmitRequest) (ledger.Decision, error) {
	return ledger.Decision{Allowed: true}, nil
}
func (r *renewCounter) Release(context.Context, string, string) error { return nil }
func (r *renewCounter) Renew(context.Context, string, string, time.Duration) (bool, error) {
	r.calls.Add(1)
	if r.block != nil {
		<-r.block
	}
	return true, nil
}

// TestAdmitKeepsAReservationWithoutALease: a request that reserves tokens
// against a quota or TPM limit, with no concurrency limit, still has its
// hold renewed while it runs, so a long stream keeps its reservation.
func TestAdmitKeepsAReservationWithoutALease(t *testing.T) {
	r := &renewCounter{}
	g := &Gateway{admitter: r, log: slog.New(slog.DiscardHandler)}
	cfg := &config.Config{}
	cfg.RateLimit.LeaseTTL = config.Duration(20 * time.Millisecond)
	x := &exchange{requestID: "req-long", rt: &runtime{cfg: cfg}, body: []byte(`{}`),
		key: &auth.Key{ID: "k", Quota: 100000, Period: "daily"}}
	if e := g.admit(context.Background(), x); e != nil {
		t.Fatal(e)
	}
	if x.adm == nil || x.adm.lease || x.adm.reserved <= 0 {
		t.Fatalf("admission %+v; want a reservation and no lease", x.adm)
	}
	time.Sleep(100 * time.Millisecond)
	g.release(x)
	n := r.calls.Load()
	if n < 3 {
		t.Fatalf("%d renewals in 100 ms at one per 10 ms", n)
	}
	time.Sleep(50 * time.Millisecond)
	if m := r.calls.Load(); m != n {
		t.Fatalf("%d renewals after release", m-n)
	}
}

// TestReleaseDuringRenewStopsRenewing: a renewal in flight when the
// request ends does not re-arm the timer.
func TestReleaseDuringRenewStopsRenewing(t *testing.T) {
	r := &renewCounter{block: make(chan struct{})}
	g := &Gateway{admitter: r, log: slog.New(slog.DiscardHandler)}
	x := &exchange{requestID: "req-a"}
	x.adm = &admission{keyID: "k", lease: true, reserved: 500}
	g.keepHold(x, 20*time.Millisecond)
	for r.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	wg.Go(func() { g.release(x) })
	wg.Wait()
	close(r.block) // the renewal in flight returns after the release
	time.Sleep(100 * time.Millisecond)
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("%d renewals; want the one in flight at release and none after", n)
	}
}

// panicWriter is a ResponseWriter that panics on the reply's head, as a
// handler bug or a writer raising http.ErrAbortHandler would.
type panicWriter struct{ h http.Header }

func (w *panicWriter) Header() http.Header       { return w.h }
func (w *panicWriter) Write([]byte) (int, error) { panic(http.ErrAbortHandler) }
func (w *panicWriter) WriteHeader(int)           { panic(http.ErrAbortHandler) }

// servePanicking serves a chat request with body, with the test key, to g
// through a panicWriter, and checks that the panic reached the server.
func servePanicking(t *testing.T, g *Gateway, body string) {
	t.Helper()
	req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	defer func() {
		if r := recover(); r != http.ErrAbortHandler {
			t.Fatalf("recovered %v; want http.ErrAbortHandler", r)
		}
	}()
	g.Handler().ServeHTTP(&panicWriter{h: http.Header{}}, req)
}

// TestPanicFreesTheLease: a request whose handler panics after admission
// (net/http recovers it and drops the connection) gives its concurrency
// slot back at once and stops renewing it, instead of holding the key's
// slot for as long as the process lives.
func TestPanicFreesTheLease(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, limits: {max_concurrent: 1}}]\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := newSink()
	g, err := New(Options{Config: cfg, Events: s, Admitter: ledger.NewMemoryAdmitter(nil, nil), SettleLocally: true})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	servePanicking(t, g, `{"model":"m1"}`)
	// The request is recorded all the same (nothing reached the client:
	// the reply's head panicked).
	if ev := s.next(t); ev.Error != "internal_error" || ev.Usage.TotalTokens != 0 {
		t.Fatalf("event of the panicked request: error %q, usage %+v", ev.Error, ev.Usage)
	}
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m1"}`, withKey()); resp.StatusCode != 200 {
		t.Fatalf("request after a panicked one: %d %s; want 200 (its slot freed)", resp.StatusCode, body)
	}
}

// stuckRelease is an admitter whose Release does not return until
// unblocked, as one on a Redis that is down or frozen.
type stuckRelease struct {
	renewCounter
	unblock  chan struct{}
	released atomic.Int64
}

func (s *stuckRelease) Release(context.Context, string, string) error {
	<-s.unblock
	s.released.Add(1)
	return nil
}

// TestAStuckReleaseDoesNotHoldTheReply: the end of a reply waits for its
// lease's release at most releaseWait; the release still happens once the
// store answers.
func TestAStuckReleaseDoesNotHoldTheReply(t *testing.T) {
	s := &stuckRelease{unblock: make(chan struct{})}
	g := &Gateway{admitter: s, log: slog.New(slog.DiscardHandler)}
	cfg := &config.Config{}
	cfg.RateLimit.LeaseTTL = config.Duration(time.Minute)
	x := &exchange{requestID: "req-stuck", rt: &runtime{cfg: cfg}, body: []byte(`{}`),
		key: &auth.Key{ID: "k", Limits: config.PerKeyLimits{MaxConcurrent: 1}}}
	if e := g.admit(context.Background(), x); e != nil {
		t.Fatal(e)
	}
	if x.adm == nil || !x.adm.lease {
		t.Fatalf("admission %+v; want a lease", x.adm)
	}
	start := time.Now()
	g.release(x)
	if d := time.Since(start); d < releaseWait || d > releaseWait+time.Second {
		t.Fatalf("release returned after %s, want about %s", d, releaseWait)
	}
	if s.released.Load() != 0 {
		t.Fatal("released before the store answered")
	}
	close(s.unblock)
	deadline := time.Now().Add(5 * time.Second)
	for s.released.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the release never happened")
		}
		time.Sleep(time.Millisecond)
	}
}
