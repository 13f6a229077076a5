package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
)

// downAdmitter is an admitter whose store is unreachable.
type downAdmitter struct{}

var errRedisDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

func (downAdmitter) Admit(context.Context, ledger.AdmitRequest) (ledger.Decision, error) {
	return ledger.Decision{}, errRedisDown
}
func (downAdmitter) Release(context.Context, string, string) error { return errRedisDown }

// records keeps the log records a test's gateway writes.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// lines returns the records with message msg and the "suppressed" count
// of each (0 when absent).
func (r *records) lines(msg string) []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int64
	for _, rec := range r.recs {
		if rec.Message != msg {
			continue
		}
		var n int64
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				n = a.Value.Int64()
			}
			return true
		})
		out = append(out, n)
	}
	return out
}

// TestRedisDownLogsNoLinePerRequest: while Redis is down every admission
// and lease release fails; each request still gets its 503, but the log
// gets one line per kind of failure per failureLogInterval, the next one
// saying how many were left out, rather than one per request.
func TestRedisDownLogsNoLinePerRequest(t *testing.T) {
	rec := &records{}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	g := &Gateway{admitter: downAdmitter{}, log: slog.New(rec), now: func() time.Time { return now }}
	g.metrics = newMetrics(prometheus.NewRegistry(), g.inflight.Load)
	rt := &runtime{cfg: &config.Config{}}
	key := &auth.Key{ID: "k", Limits: config.PerKeyLimits{MaxConcurrent: 5}}

	request := func(i int) {
		x := &exchange{requestID: fmt.Sprintf("req-%d", i), rt: rt, body: []byte(`{}`), key: key}
		if e := g.admit(context.Background(), x); e == nil || e.Status != 503 || e.Code != "rate_limiter_unavailable" {
			t.Fatalf("admission with Redis down: %+v, want 503 rate_limiter_unavailable", e)
		}
		x.adm = &admission{keyID: "k", lease: true}
		g.release(x)
	}
	for i := range 100 {
		request(i)
		now = now.Add(10 * time.Millisecond) // 100 requests/s
	}
	now = now.Add(failureLogInterval)
	request(100)

	for _, msg := range []string{"admission failed", "lease not released; retried in the background"} {
		got := rec.lines(msg)
		if len(got) != 2 || got[0] != 0 || got[1] != 99 {
			t.Errorf("%q: lines with suppressed counts %v over 101 failing requests spanning %s; want [0 99]",
				msg, got, failureLogInterval+time.Second)
		}
	}
}

// TestClientLeavesWhileAdmissionWaits: a client that leaves while its
// admission waits on a ledger that then fails ends as 499
// client_closed_request, neither a refusal (counted, logged as the ledger's
// failure) nor a 503 no one received.
func TestClientLeavesWhileAdmissionWaits(t *testing.T) {
	rec := &records{}
	reg := prometheus.NewRegistry()
	g := &Gateway{admitter: downAdmitter{}, log: slog.New(rec), now: time.Now}
	g.metrics = newMetrics(reg, g.inflight.Load)
	rt := &runtime{cfg: &config.Config{}}
	key := &auth.Key{ID: "k", Limits: config.PerKeyLimits{MaxConcurrent: 5}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	x := &exchange{requestID: "req-left", rt: rt, body: []byte(`{}`), key: key}
	if e := g.admit(ctx, x); e == nil || e.Status != 499 || e.Code != "client_closed_request" {
		t.Fatalf("admission failed after the client left: %+v, want 499 client_closed_request", e)
	}
	if n := testutil.ToFloat64(g.metrics.rejections.WithLabelValues("ledger_unavailable")); n != 0 {
		t.Errorf("counted %v refusals for the ledger's failure", n)
	}
	if got := rec.lines("admission failed"); len(got) != 0 {
		t.Errorf("logged the ledger's failure for a client that left")
	}
}
