package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
)

// gathered returns the series of the metric name in reg whose labels
// include want.
func gathered(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue series
				}
			}
			out = append(out, m)
		}
	}
	return out
}

// counted sums the counters of name in reg whose labels include want.
func counted(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	sum := 0.0
	for _, m := range gathered(t, reg, name, want) {
		sum += m.GetCounter().GetValue()
	}
	return sum
}

// observations counts the samples of the histogram name in reg.
func observations(t *testing.T, reg prometheus.Gatherer, name string) uint64 {
	t.Helper()
	n := uint64(0)
	for _, m := range gathered(t, reg, name, nil) {
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// bodyPanicWriter takes the reply's head and panics on its body, after
// the request's event was committed.
type bodyPanicWriter struct{ h http.Header }

func (w *bodyPanicWriter) Header() http.Header       { return w.h }
func (w *bodyPanicWriter) Write([]byte) (int, error) { panic(http.ErrAbortHandler) }
func (w *bodyPanicWriter) WriteHeader(int)           {}

// TestPanickedRequestIsCountedAndLogged: a request whose handler panics
// (net/http recovers it and drops the connection), before its event was
// committed or after, is in the metrics and has its access line, as its
// event is published, instead of being billed but missing from
// llmproxy_requests_total and the log.
func TestPanickedRequestIsCountedAndLogged(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	// status is what the client saw: nothing (the connection dropped)
	// is a 500, a head that went out is its status; both are errors.
	for _, c := range []struct {
		name   string
		w      http.ResponseWriter
		status string
	}{
		{"panic on the head", &panicWriter{h: http.Header{}}, "500"},
		{"panic on the body", &bodyPanicWriter{h: http.Header{}}, "200"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, name: b1}]\napi_keys: [{key: %q}]\n", backend.URL, testKey))
			reg := prometheus.NewRegistry()
			lines := make(chan map[string]string, 10)
			s := newSink()
			g, err := New(Options{Config: cfg, Events: s, Registerer: reg, Logger: slog.New(recordHandler{out: lines})})
			if err != nil {
				t.Fatal(err)
			}
			g.Start(context.Background())
			req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m1"}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			func() {
				defer func() {
					if r := recover(); r != http.ErrAbortHandler {
						t.Fatalf("recovered %v; want http.ErrAbortHandler", r)
					}
				}()
				g.Handler().ServeHTTP(c.w, req)
			}()
			// (A panic on the body comes after the event was committed:
			// its error stays as it was.)
			if ev := s.next(t); strconv.Itoa(ev.StatusCode) != c.status {
				t.Errorf("event: status %d; want %s", ev.StatusCode, c.status)
			}
			if n := counted(t, reg, "llmproxy_requests_total", map[string]string{"path": "/v1/chat/completions", "backend": "b1", "status": c.status}); n != 1 {
				t.Errorf("llmproxy_requests_total{status=%q} = %v after a panicked request, want 1", c.status, n)
			}
			if n := observations(t, reg, "llmproxy_latency_ms"); n != 1 {
				t.Errorf("llmproxy_latency_ms observed %d times, want 1", n)
			}
			access := 0
			for len(lines) > 0 {
				if l := <-lines; l["msg"] == "request" {
					access++
				}
			}
			if access != 1 {
				t.Errorf("%d access lines for the panicked request, want 1", access)
			}
			if n := gathered(t, reg, "llmproxy_inflight_requests", nil); len(n) != 1 || n[0].GetGauge().GetValue() != 0 {
				t.Errorf("llmproxy_inflight_requests after the panic: %v, want 0", n)
			}
		})
	}
}

// TestKeyStoreDownIsARejection: a request refused because the Redis key
// store does not answer is counted in llmproxy_admission_rejections_total
// (reason key_store_unavailable), as one refused because the Redis rate
// limiter does not answer is (ledger_unavailable).
func TestKeyStoreDownIsARejection(t *testing.T) {
	rdb, dead := deadRedis(t)
	cfg := parseConfig(t, `
backends: [{url: "http://127.0.0.1:9"}]
auth: {enabled: true, storage: redis}
redis: {url: "redis://`+dead+`"}
`)
	reg := prometheus.NewRegistry()
	gw, _ := serveOptions(t, Options{Config: cfg, Redis: rdb, RedisPrefix: "llmproxy-test:", Registerer: reg})
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, withKey())
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "key_store_unavailable") {
		t.Fatalf("request with the key store down: %d %s, want 503 key_store_unavailable", resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("503 with Retry-After %q, want 1", ra)
	}
	if n := counted(t, reg, "llmproxy_admission_rejections_total", map[string]string{"reason": "key_store_unavailable"}); n != 1 {
		t.Errorf("llmproxy_admission_rejections_total{reason=\"key_store_unavailable\"} = %v, want 1", n)
	}
}

// panicKeys is a key store whose look-up panics.
type panicKeys struct{}

func (panicKeys) LookupHash(context.Context, string) (*auth.Key, error) {
	panic(http.ErrAbortHandler)
}

// panicAdmitter admits nothing: its Admit panics.
type panicAdmitter struct{ ledger.Admitter }

func (panicAdmitter) Admit(context.Context, ledger.AdmitRequest) (ledger.Decision, error) {
	panic(http.ErrAbortHandler)
}

// TestPanicBeforeTheRelayIsRecorded: a request whose handler panics before
// it reached a backend (in the key look-up, in admission, or writing
// /v1/models' reply) has its event, its count in the metrics as the 500
// the dropped connection stands for, and its access line; an admitted
// one gives its concurrency slot back.
func TestPanicBeforeTheRelayIsRecorded(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			_, _ = w.Write([]byte(`{"object":"list","data":[{"id":"m1","object":"model"}]}`))
			return
		}
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	for _, c := range []struct {
		name     string
		method   string
		path     string
		keys     auth.Store
		admitter ledger.Admitter
		w        http.ResponseWriter
		keyID    string
	}{
		{name: "key look-up", method: "POST", path: "/v1/chat/completions", keys: panicKeys{},
			w: httptest.NewRecorder(), keyID: UnauthenticatedKeyID},
		{name: "admission", method: "POST", path: "/v1/chat/completions", admitter: panicAdmitter{},
			w: httptest.NewRecorder(), keyID: "k1"},
		{name: "models reply", method: "GET", path: "/v1/models", admitter: ledger.NewMemoryAdmitter(nil, nil),
			w: &panicWriter{h: http.Header{}}, keyID: "k1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, name: b1}]\napi_keys: [{key: %q, id: k1, limits: {max_concurrent: 1}}]\n", backend.URL, testKey))
			reg := prometheus.NewRegistry()
			lines := make(chan map[string]string, 10)
			s := newSink()
			g, err := New(Options{Config: cfg, Events: s, Registerer: reg, Keys: c.keys, Admitter: c.admitter,
				Logger: slog.New(recordHandler{out: lines})})
			if err != nil {
				t.Fatal(err)
			}
			g.Start(context.Background())
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(`{"model":"m1"}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			func() {
				defer func() {
					if r := recover(); r != http.ErrAbortHandler {
						t.Fatalf("recovered %v; want http.ErrAbortHandler", r)
					}
				}()
				g.Handler().ServeHTTP(c.w, req)
			}()
			select {
			case ev := <-s.ch:
				if ev.Error != "internal_error" || ev.StatusCode != 500 || ev.KeyID != c.keyID || ev.Endpoint != c.path {
					t.Errorf("event: %s %d %q key %q; want %s 500 internal_error key %q", ev.Endpoint, ev.StatusCode, ev.Error, ev.KeyID, c.path, c.keyID)
				}
			default:
				t.Error("no event for the panicked request")
			}
			if n := counted(t, reg, "llmproxy_requests_total", map[string]string{"path": c.path, "status": "500"}); n != 1 {
				t.Errorf("llmproxy_requests_total{status=\"500\"} = %v after a panicked request, want 1", n)
			}
			access := 0
			for len(lines) > 0 {
				if l := <-lines; l["msg"] == "request" && l["status"] == "500" && l["error"] == "internal_error" {
					access++
				}
			}
			if access != 1 {
				t.Errorf("%d access lines (status 500, internal_error) for the panicked request, want 1", access)
			}
			if n := gathered(t, reg, "llmproxy_inflight_requests", nil); len(n) != 1 || n[0].GetGauge().GetValue() != 0 {
				t.Errorf("llmproxy_inflight_requests after the panic: %v, want 0", n)
			}
			if c.name == "models reply" {
				srv := httptest.NewServer(g.Handler())
				defer srv.Close()
				if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m1"}`, withKey()); resp.StatusCode != 200 {
					t.Fatalf("request after a panicked one: %d %s; want 200 (its slot freed)", resp.StatusCode, body)
				}
			}
		})
	}
}

// TestTTFTCountsOnlyServedReplies: llmproxy_ttft_ms samples replies that
// served the request. An engine's fast refusal (a 400 for a prompt past
// the context, a 503 when it is full) was a sample too, so the histogram's
// percentiles fell while clients were being refused.
func TestTTFTCountsOnlyServedReplies(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("refuse") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":{"message":"too long","type":"BadRequestError","code":400}}`))
			return
		}
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, name: b1}]\napi_keys: [{key: %q}]\n", backend.URL, testKey))
	reg := prometheus.NewRegistry()
	g, err := New(Options{Config: cfg, Events: newSink(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions?refuse=1", `{"model":"m1"}`, withKey()); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("refused request: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m1"}`, withKey()); resp.StatusCode != http.StatusOK {
		t.Fatalf("served request: %d %s", resp.StatusCode, body)
	}
	// observe runs once the reply is out: wait for both requests.
	deadline := time.Now().Add(5 * time.Second)
	for counted(t, reg, "llmproxy_requests_total", nil) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := observations(t, reg, "llmproxy_ttft_ms"); n != 1 {
		t.Errorf("llmproxy_ttft_ms has %d samples after one refused and one served request, want 1", n)
	}
}

// TestPublicStatusOff: with server.public_status false the gateway's own
// listener, which clients reach, serves no /metrics and a /readyz without
// the backends' names and URLs; by default it serves both.
func TestPublicStatusOff(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			// A proxy's page in front of the engine: its error is told
			// in the gateway's words, naming the backend or not.
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>bad gateway</html>")
		}
	}))
	defer backend.Close()
	for _, c := range []struct {
		setting      string
		metrics      int
		readyDetails bool
	}{
		{"", 200, true},
		{"server: {public_status: true}\n", 200, true},
		{"server: {public_status: false}\n", 404, false},
	} {
		cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, name: internal-gpu, models: [m]}]\n%s", backend.URL, c.setting))
		gw, _ := serveOptions(t, Options{Config: cfg, Registerer: prometheus.NewRegistry(), Gatherer: prometheus.NewRegistry()})
		resp, body := do(t, "GET", gw.URL+"/metrics", "", nil)
		if resp.StatusCode != c.metrics || c.metrics == 404 && !strings.Contains(string(body), "unknown_url") {
			t.Errorf("%q: /metrics %d %s, want %d", c.setting, resp.StatusCode, body, c.metrics)
		}
		resp, body = do(t, "GET", gw.URL+"/readyz", "", nil)
		if resp.StatusCode != 200 || strings.Contains(string(body), "internal-gpu") != c.readyDetails || strings.Contains(string(body), backend.URL) != c.readyDetails {
			t.Errorf("%q: /readyz %d %s, details shown: want %v", c.setting, resp.StatusCode, body, c.readyDetails)
		}
		if !c.readyDetails && string(body) != "{\"ready\":true}\n" {
			t.Errorf("%q: /readyz %s, want its status alone", c.setting, body)
		}
		resp, body = do(t, "GET", gw.URL+"/v1/models", "", nil)
		if resp.StatusCode != 200 || strings.Contains(string(body), "internal-gpu") != c.readyDetails {
			t.Errorf("%q: /v1/models %d %s, the backend's name shown: want %v", c.setting, resp.StatusCode, body, c.readyDetails)
		}
		resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, nil)
		if resp.StatusCode != 502 || strings.Contains(string(body), "internal-gpu") != c.readyDetails || !strings.Contains(string(body), "answered 502") {
			t.Errorf("%q: a backend's error %d %s, its name shown: want %v", c.setting, resp.StatusCode, body, c.readyDetails)
		}
	}
}

// deadRedis is a Redis client of an address nothing listens on, and the
// address; the client is closed when the test ends.
func deadRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	rdb := redis.NewClient(&redis.Options{Addr: dead, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	return rdb, dead
}
