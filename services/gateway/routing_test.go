package gateway

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway/internal/balancer"
)

// routingGateway serves yaml and returns the gateway's pool with it, so
// that a test can read the upstreams' state.
func routingGateway(t *testing.T, yaml string) (*httptest.Server, *balancer.Pool) {
	t.Helper()
	g, srv := startGateway(t, yaml)
	return srv, g.rt.Load().pool
}

// startGateway starts a gateway of the config text yaml, its events going
// to a sink nobody reads, and serves it until the test ends; it returns the
// gateway too, for tests that reload it or read its runtime.
func startGateway(t *testing.T, yaml string) (*Gateway, *httptest.Server) {
	t.Helper()
	g, err := New(Options{Config: parseConfig(t, yaml), Events: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	g.Start(ctx)
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return g, srv
}

// parseConfig parses the config text yaml.
func parseConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// countingBackend answers every request with status and body and counts
// the requests.
func countingBackend(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// TestStandbyServesWhileItsPrimaryIsEjected: the README's pattern, a
// primary with weight and a weight 0 standby as its fallback. Once the
// failing primary is ejected every request goes to the standby instead of
// getting 503.
func TestStandbyServesWhileItsPrimaryIsEjected(t *testing.T) {
	primary, primaryHits := countingBackend(t, http.StatusServiceUnavailable, `{"error":"overloaded"}`)
	standby, standbyHits := countingBackend(t, http.StatusOK, `{"from":"standby"}`)
	gw, _ := gatewayFromYAML(t, fmt.Sprintf(`
backends:
  - {url: %q, name: vllm-1, weight: 5}
  - {url: %q, name: vllm-2, weight: 0}
routing:
  retry: {enabled: true, max_retries: 2, initial_wait: 1ms, max_wait: 1ms}
  fallback:
    - {primary: vllm-1, fallback: [vllm-2]}
health_check: {failure_threshold: 3, cooldown: 1m}
api_keys: [{key: %q}]
`, primary.URL, standby.URL, testKey))
	for i := range 8 {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
		if resp.StatusCode != 200 || string(body) != `{"from":"standby"}` {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if standbyHits.Load() != 8 || primaryHits.Load() >= 8 {
		t.Fatalf("primary tried %d times, standby %d", primaryHits.Load(), standbyHits.Load())
	}
}

// TestRetriesOfOneRequestCountOnce: a request answered 5xx on every try
// is one failure of its backend, not one per retry, so with max_retries 2
// and failure_threshold 3 it takes three bad requests, not one, to eject
// the backend.
func TestRetriesOfOneRequestCountOnce(t *testing.T) {
	backend, hits := countingBackend(t, http.StatusInternalServerError, `{"error":"boom"}`)
	gw, pool := routingGateway(t, fmt.Sprintf(`
backends: [{url: %q, name: only}]
routing:
  retry: {enabled: true, max_retries: 2, initial_wait: 1ms, max_wait: 1ms}
health_check: {failure_threshold: 3, cooldown: 1m}
api_keys: [{key: %q}]
`, backend.URL, testKey))
	up := pool.ByName("only")
	for i := range 3 {
		if up.State() != balancer.StateHealthy {
			t.Fatalf("after %d requests (%d tries) the backend is %s", i, hits.Load(), up.State())
		}
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
		if resp.StatusCode < 500 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		if i == 0 && hits.Load() != 3 {
			t.Fatalf("backend tried %d times, want 1 + 2 retries", hits.Load())
		}
	}
	if up.State() != balancer.StateEjected || up.Ejections() != 1 {
		t.Fatalf("after 3 failed requests: %s, %d ejections", up.State(), up.Ejections())
	}
}

// TestOnlyBackendEjectedIsStillTried: a backend ejected after a blip is the
// only one for the model; the next request is sent to it anyway and
// succeeds, instead of 503 for the whole cooldown, and the model lists
// keep its models.
func TestOnlyBackendEjectedIsStillTried(t *testing.T) {
	var calls atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, `{"error":"blip"}`, http.StatusBadGateway)
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(backend.Close)
	gw, pool := routingGateway(t, fmt.Sprintf(`
backends: [{url: %q, name: only, models: [m]}]
routing:
  retry: {enabled: false}
health_check: {failure_threshold: 1, cooldown: 1m}
api_keys: [{key: %q}]
`, backend.URL, testKey))
	if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("first request: %d %s", resp.StatusCode, body)
	}
	if st := pool.ByName("only").State(); st != balancer.StateEjected {
		t.Fatalf("after the failure the backend is %s", st)
	}
	// Requests are still sent to it: the gateway stays ready.
	if resp, body := do(t, "GET", gw.URL+"/readyz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("/readyz with the only backend ejected: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "GET", gw.URL+"/v1/models", "", withKey()); resp.StatusCode != 200 || !strings.Contains(string(body), `"id":"m"`) {
		t.Fatalf("/v1/models with the only backend ejected: %d %s, want m listed", resp.StatusCode, body)
	}
	for i := range 3 {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
		if resp.StatusCode != 200 || string(body) != `{"ok":true}` {
			t.Fatalf("request %d while ejected: %d %s", i, resp.StatusCode, body)
		}
	}
}

// sseBackend streams one chat chunk after wait, its head sent and flushed
// at once as vLLM and TGI do, and counts the requests.
func sseBackend(t *testing.T, wait time.Duration) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		select {
		case <-time.After(wait):
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// TestLatencyBasedTimesTheFirstToken: latency_based learns from the
// first byte of the body, not from the head, so a backend that answers
// its head at once but its first token only after 300 ms counts as slow
// and the fast one takes most requests; a failed reply is no sample.
func TestLatencyBasedTimesTheFirstToken(t *testing.T) {
	slow, slowHits := sseBackend(t, 300*time.Millisecond)
	fast, fastHits := sseBackend(t, 0)
	failing, _ := countingBackend(t, http.StatusServiceUnavailable, `{"error":"overloaded"}`)
	gw, pool := routingGateway(t, fmt.Sprintf(`
backends:
  - {url: %q, name: slow, models: [m]}
  - {url: %q, name: fast, models: [m]}
  - {url: %q, name: failing, models: [f]}
routing:
  load_balance_strategy: latency_based
  retry: {enabled: false}
api_keys: [{key: %q}]
`, slow.URL, fast.URL, failing.URL, testKey))
	const n = 40
	for i := range n {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m","stream":true}`, withKey())
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	slowTTFT, _ := pool.ByName("slow").TTFT()
	fastTTFT, _ := pool.ByName("fast").TTFT()
	t.Logf("slow: %d requests, EWMA %s; fast: %d requests, EWMA %s", slowHits.Load(), slowTTFT, fastHits.Load(), fastTTFT)
	if slowTTFT < 250*time.Millisecond || fastTTFT > 100*time.Millisecond {
		t.Errorf("EWMA of time to first token: slow %s, fast %s", slowTTFT, fastTTFT)
	}
	if fastHits.Load() <= n/2 {
		t.Errorf("the fast backend took %d of %d requests, want most", fastHits.Load(), n)
	}

	if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"f"}`, withKey()); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("failing backend: %d %s", resp.StatusCode, body)
	}
	if d, ok := pool.ByName("failing").TTFT(); ok {
		t.Errorf("a 503 reply was taken as a sample: %s", d)
	}
}

// TestReloadKeepsBackendState: a reload that leaves a backend as it was
// keeps what routing knows of it: a request in flight there still counts
// (least_connections) and ends on the count it started on.
func TestReloadKeepsBackendState(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		_, _ = w.Write([]byte(`{}`))
	}))
	defer backend.Close()
	text := fmt.Sprintf("backends: [{url: %q, name: busy}]\nrouting: {load_balance_strategy: least_connections}\napi_keys: [{key: %q}]\n", backend.URL, testKey)
	g, srv := startGateway(t, text)
	done := make(chan struct{})
	go func() {
		defer close(done)
		do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
	}()
	<-arrived
	if err := g.Reload(context.Background(), parseConfig(t, text)); err != nil {
		t.Fatal(err)
	}
	busy := g.rt.Load().pool.ByName("busy")
	if n := busy.InFlight(); n != 1 {
		t.Fatalf("after the reload the backend has %d requests in flight, want the 1 open there", n)
	}
	release <- struct{}{}
	<-done
	// The backend's count drops once the handler returns, which may be
	// just after the client has read the whole reply.
	deadline := time.Now().Add(5 * time.Second)
	for busy.InFlight() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := busy.InFlight(); n != 0 {
		t.Fatalf("%d in flight once the request ended", n)
	}
}

// TestReloadWithoutHealthChecksForgetsTheirVerdict: a backend the active
// checks marked down is served again after a reload that drops
// health_check.path (or sets enabled: false); it kept its "unhealthy"
// verdict with no check left to lift it, so every request got 503 until a
// restart.
func TestReloadWithoutHealthChecksForgetsTheirVerdict(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	for _, c := range []struct{ name, without string }{
		{"path dropped", ""},
		{"checks disabled", "health_check: {path: /health, enabled: false}\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			text := "backends: [{url: %q, name: one}]\n%sapi_keys: [{key: %q}]\n"
			g, srv := startGateway(t, fmt.Sprintf(text, backend.URL, "health_check: {path: /health, interval: 1h}\n", testKey))
			if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("with the health check failing: %d %s", resp.StatusCode, body)
			}
			if err := g.Reload(context.Background(), parseConfig(t, fmt.Sprintf(text, backend.URL, c.without, testKey))); err != nil {
				t.Fatal(err)
			}
			if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusOK {
				t.Fatalf("after the reload without checks: %d %s", resp.StatusCode, body)
			}
			if resp, body := do(t, "GET", srv.URL+"/readyz", "", nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("/readyz after the reload: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// TestRoundRobinPerModel: two models on two backends each, their requests
// taking turns, are each spread over their own backends. round_robin
// turned one counter over every pick, so each model's requests went to
// the same backend every time and the other two backends got nothing.
func TestRoundRobinPerModel(t *testing.T) {
	var srvs []string
	var hits []*atomic.Int64
	for range 4 {
		s, n := countingBackend(t, http.StatusOK, `{}`)
		srvs, hits = append(srvs, s.URL), append(hits, n)
	}
	gw, _ := routingGateway(t, fmt.Sprintf(`
backends:
  - {url: %q, models: [m1]}
  - {url: %q, models: [m1]}
  - {url: %q, models: [m2]}
  - {url: %q, models: [m2]}
routing: {load_balance_strategy: round_robin}
api_keys: [{key: %q}]
`, srvs[0], srvs[1], srvs[2], srvs[3], testKey))
	for range 6 {
		for _, m := range []string{"m1", "m2"} {
			if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"`+m+`"}`, withKey()); resp.StatusCode != 200 {
				t.Fatalf("%s: %d %s", m, resp.StatusCode, body)
			}
		}
	}
	for i, n := range hits {
		if n.Load() != 3 {
			t.Fatalf("backend %d got %d of its model's 6 requests, want 3", i, n.Load())
		}
	}
}

// TestChainGoesOnWhileItsPrimaryIsDown: with its primary down, a request
// goes to the first fallback of the chain; when that one fails, the next
// is tried at once, as when the primary itself had failed. The chain was
// followed only from a try of the primary, so with retries off (the
// default) the first fallback's 502 was the client's answer.
func TestChainGoesOnWhileItsPrimaryIsDown(t *testing.T) {
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(primary.Close)
	first, firstHits := countingBackend(t, http.StatusBadGateway, `{"error":"down"}`)
	second, secondHits := countingBackend(t, http.StatusOK, `{"from":"second"}`)
	gw, pool := routingGateway(t, fmt.Sprintf(`
backends:
  - {url: %q, name: primary, weight: 1, health_check_path: /health}
  - {url: %q, name: first, weight: 0}
  - {url: %q, name: second, weight: 0}
routing:
  fallback: [{primary: primary, fallback: [first, second]}]
api_keys: [{key: %q}]
`, primary.URL, first.URL, second.URL, testKey))
	if st := pool.ByName("primary").State(); st != balancer.StateUnhealthy {
		t.Fatalf("primary is %s, want unhealthy", st)
	}
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
	if resp.StatusCode != 200 || string(body) != `{"from":"second"}` {
		t.Fatalf("%d %s, want the second fallback's answer", resp.StatusCode, body)
	}
	if firstHits.Load() != 1 || secondHits.Load() != 1 {
		t.Fatalf("first fallback tried %d times, second %d", firstHits.Load(), secondHits.Load())
	}
}

// TestPanicEndsTheTry: a request whose relay panics (a writer raising
// http.ErrAbortHandler) no longer counts in flight at its backend; it
// counted for as long as the process lived, so least_connections sent
// that backend nothing while another was idle.
func TestPanicEndsTheTry(t *testing.T) {
	backend, _ := countingBackend(t, http.StatusOK, `{}`)
	g, _ := startGateway(t, fmt.Sprintf("backends: [{url: %q, name: one}]\nrouting: {load_balance_strategy: least_connections}\napi_keys: [{key: %q}]\n", backend.URL, testKey))
	servePanicking(t, g, `{"model":"m"}`)
	if n := g.rt.Load().pool.ByName("one").InFlight(); n != 0 {
		t.Fatalf("%d requests in flight after the panicked one ended", n)
	}
}

// TestRoutedPrimaryFallsBack: a request an on_route script sends to a
// primary that fails goes on to the primary's routing.fallback chain, as
// one the strategy sent there does. A routed request followed no chain, so
// with retries off (the default) the primary's 503 was the answer.
func TestRoutedPrimaryFallsBack(t *testing.T) {
	primary, primaryHits := countingBackend(t, http.StatusServiceUnavailable, `{"error":"overloaded"}`)
	other, otherHits := countingBackend(t, http.StatusOK, `{"from":"other"}`)
	standby, _ := countingBackend(t, http.StatusOK, `{"from":"standby"}`)
	script := filepath.Join(t.TempDir(), "route.lua")
	if err := os.WriteFile(script, []byte("function on_route(req)\n  return \"primary\"\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, _ := routingGateway(t, fmt.Sprintf(`
backends:
  - {url: %q, name: primary, weight: 1}
  - {url: %q, name: other, weight: 1}
  - {url: %q, name: standby, weight: 0}
routing:
  fallback: [{primary: primary, fallback: [standby]}]
lua: {scripts: [%q]}
api_keys: [{key: %q}]
`, primary.URL, other.URL, standby.URL, script, testKey))
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
	if resp.StatusCode != 200 || string(body) != `{"from":"standby"}` {
		t.Fatalf("%d %s, want the primary's fallback's answer", resp.StatusCode, body)
	}
	if primaryHits.Load() != 1 || otherHits.Load() != 0 {
		t.Fatalf("primary tried %d times, other %d", primaryHits.Load(), otherHits.Load())
	}
}

// TestFallbacksDoNotUseUpRetries: a primary's fallback is tried at once
// whether retries are on or off, and routing.retry.max_retries counts the
// retries that follow, not the fallback tries: with max_retries 1 a
// request whose primary and fallback both fail is tried a third time.
// The fallback's try counted as a retry, so none was left.
func TestFallbacksDoNotUseUpRetries(t *testing.T) {
	for _, c := range []struct {
		name, retry string
		tries       int64
	}{
		{"retries off", "{enabled: false}", 2},
		{"no retries", "{enabled: true, max_retries: 0}", 2},
		{"one retry", "{enabled: true, max_retries: 1, initial_wait: 1ms, max_wait: 1ms}", 3},
		{"two retries", "{enabled: true, max_retries: 2, initial_wait: 1ms, max_wait: 1ms}", 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, fail := range []string{"5xx", "connect"} {
				primary, primaryHits := failingBackend(t, fail)
				standby, standbyHits := failingBackend(t, fail)
				gw, _ := routingGateway(t, fmt.Sprintf(`
backends:
  - {url: %q, name: primary, weight: 1}
  - {url: %q, name: standby, weight: 0}
routing:
  retry: %s
  fallback: [{primary: primary, fallback: [standby]}]
health_check: {failure_threshold: 100}
api_keys: [{key: %q}]
`, primary, standby, c.retry, testKey))
				resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
				if resp.StatusCode < 500 {
					t.Fatalf("%s: %d %s", fail, resp.StatusCode, body)
				}
				if n := primaryHits.Load() + standbyHits.Load(); n != c.tries || standbyHits.Load() != 1 {
					t.Fatalf("%s: %d tries, %d of them on the fallback; want %d, 1", fail, n, standbyHits.Load(), c.tries)
				}
			}
		})
	}
}

// failingBackend returns the URL of a backend that fails every request,
// with a 503 (fail "5xx") or by closing each connection it accepts before
// reading from it ("connect"), and the count of requests or connections.
func failingBackend(t *testing.T, fail string) (string, *atomic.Int64) {
	t.Helper()
	if fail == "5xx" {
		srv, hits := countingBackend(t, http.StatusServiceUnavailable, `{"error":"overloaded"}`)
		return srv.URL, hits
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return "http://" + ln.Addr().String(), &n
}

// TestRouteToABackendWithoutTheModel: on_route naming a backend that does
// not serve the request's model is a script's mistake: the request goes by
// the strategy, and a WARN names the backend and the model.
func TestRouteToABackendWithoutTheModel(t *testing.T) {
	small, smallHits := countingBackend(t, http.StatusOK, `{"from":"small"}`)
	big, _ := countingBackend(t, http.StatusOK, `{"from":"big"}`)
	script := filepath.Join(t.TempDir(), "route.lua")
	if err := os.WriteFile(script, []byte("function on_route(req)\n  return \"small\"\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, fmt.Sprintf(`
backends:
  - {url: %q, name: small, models: [small-model]}
  - {url: %q, name: big, models: [big-model]}
lua: {scripts: [%q]}
api_keys: [{key: %q}]
`, small.URL, big.URL, script, testKey))
	lines := make(chan map[string]string, 100)
	gw, _ := serveOptions(t, Options{Config: cfg, Logger: slog.New(recordHandler{out: lines})})
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"big-model"}`, withKey())
	if resp.StatusCode != 200 || string(body) != `{"from":"big"}` || smallHits.Load() != 0 {
		t.Fatalf("%d %s (small asked %d times), want big's answer", resp.StatusCode, body, smallHits.Load())
	}
	for {
		select {
		case l := <-lines:
			if strings.HasPrefix(l["msg"], "on_route named a backend that does not serve") {
				if l["backend"] != "small" || l["model"] != "big-model" {
					t.Fatalf("warning %v", l)
				}
				return
			}
		default:
			t.Fatal("no warning for a route to a backend without the model")
		}
	}
}

// TestBackendFailureIsLogged: the client's 502 does not say why a backend
// could not be reached; the log does (rate-limited), without the backend's
// URL, which may hold credentials: here a TLS certificate not trusted.
func TestBackendFailureIsLogged(t *testing.T) {
	backend := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	withCreds := strings.Replace(backend.URL, "https://", "https://svc:hunter2-secret@", 1)
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, name: gpu}]\n", withCreds))
	lines := make(chan map[string]string, 100)
	gw, _ := serveOptions(t, Options{Config: cfg, Logger: slog.New(recordHandler{out: lines})})
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("%d %s, want 502", resp.StatusCode, body)
	}
	for {
		select {
		case l := <-lines:
			if l["msg"] != "backend request failed" {
				continue
			}
			if l["backend"] != "gpu" || !strings.Contains(l["err"], "certificate") || strings.Contains(fmt.Sprint(l), "hunter2") {
				t.Fatalf("log line %v, want the backend's name and the certificate's failure, no credentials", l)
			}
			return
		default:
			t.Fatal("no log line for the backend's failure")
		}
	}
}

// TestBackendTLSFiles: backends[].tls gives an https backend with a private
// CA that verifies its clients the CA and a client certificate, for
// requests, health checks and the model lists; without them the backend
// cannot be reached.
func TestBackendTLSFiles(t *testing.T) {
	dir := t.TempDir()
	// The client's certificate, self-signed: the backend trusts it alone.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "gateway"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, _ := x509.ParseCertificate(der)
	writePEM := func(name, typ string, b []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	certFile, keyFile := writePEM("client.pem", "CERTIFICATE", der), writePEM("client-key.pem", "EC PRIVATE KEY", keyDER)
	var checks atomic.Int32
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			checks.Add(1)
		case "/v1/models":
			_, _ = io.WriteString(w, `{"data":[{"id":"private-model"}]}`)
		default:
			_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"hi"}}]}`)
		}
	}))
	pool := x509.NewCertPool()
	pool.AddCert(clientCert)
	backend.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	backend.StartTLS()
	defer backend.Close()
	caFile := writePEM("ca.pem", "CERTIFICATE", backend.Certificate().Raw)
	for _, c := range []struct {
		name, tls string
		status    int
	}{
		{"ca and client certificate", fmt.Sprintf("{ca_file: %q, cert_file: %q, key_file: %q}", caFile, certFile, keyFile), 200},
		// Marked down by the first health check: 503.
		{"ca alone", fmt.Sprintf("{ca_file: %q}", caFile), 503},
		{"none", "{}", 503},
	} {
		t.Run(c.name, func(t *testing.T) {
			g, gw := startGateway(t, fmt.Sprintf("backends: [{url: %q, name: private, tls: %s}]\nhealth_check: {path: /health, failure_threshold: 100}\n", backend.URL, c.tls))
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, nil)
			if resp.StatusCode != c.status {
				t.Fatalf("chat: %d %s, want %d", resp.StatusCode, body, c.status)
			}
			if c.status != 200 {
				return
			}
			resp, body = do(t, "GET", gw.URL+"/v1/models", "", nil)
			if resp.StatusCode != 200 || !strings.Contains(string(body), "private-model") {
				t.Fatalf("models: %d %s", resp.StatusCode, body)
			}
			before := checks.Load()
			g.rt.Load().health.RunOnce(context.Background())
			if checks.Load() == before || !g.rt.Load().pool.ByName("private").Healthy() {
				t.Fatal("the health check did not reach the backend with its certificate")
			}
		})
	}
}

// TestReloadSaysABackendIsBack: a reload that makes a backend again (its
// health_check_path changed) and finds it healthy where it was down says
// so, as a check that finds it back does; a log reader saw it go down and
// never come back.
func TestReloadSaysABackendIsBack(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer backend.Close()
	text := "backends: [{url: %q, name: one, health_check_path: %s}]\nhealth_check: {interval: 1h}\n"
	lines := make(chan map[string]string, 100)
	g, err := New(Options{Config: parseConfig(t, fmt.Sprintf(text, backend.URL, "/bad")), Events: newSink(), Logger: slog.New(recordHandler{out: lines})})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	t.Cleanup(func() { g.rt.Load().stop() })
	if g.rt.Load().pool.ByName("one").Healthy() {
		t.Fatal("the backend is healthy with its check failing")
	}
	if err := g.Reload(context.Background(), parseConfig(t, fmt.Sprintf(text, backend.URL, "/good"))); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case l := <-lines:
			if l["msg"] == "backend health changed" && l["healthy"] == "true" {
				if l["backend"] != "one" || l["reason"] != "configuration reloaded" {
					t.Fatalf("line %v", l)
				}
				return
			}
		default:
			t.Fatal("no line for the backend back after the reload")
		}
	}
}

// TestHTTP2StreamWithoutLengthEnds: over HTTP/2 a reply without a length
// ends explicitly, so a stream that ends without its format's last event
// (a proxy that leaves out [DONE]) ends as it is, and an empty reply is
// relayed; only an HTTP/1 reply without a length ends where its connection
// does (TestStreamWithoutLengthCutBeforeItsEnd).
func TestHTTP2StreamWithoutLengthEnds(t *testing.T) {
	var protos sync.Map
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos.Store(r.Proto, true)
		_, _ = io.ReadAll(r.Body)
		// Flushed, so that the server sends no length.
		if r.URL.Path == "/v1/embeddings" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		w.(http.Flusher).Flush()
	}))
	backend.EnableHTTP2 = true
	backend.StartTLS()
	defer backend.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: backend.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	_, gw := startGateway(t, fmt.Sprintf("backends: [{url: %q, name: h2, tls: {ca_file: %q}}]\n", backend.URL, caFile))
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m","stream":true}`, nil)
	if resp.StatusCode != 200 || bytes.Contains(body, []byte("event: error")) || !bytes.Contains(body, []byte(`"a"`)) {
		t.Fatalf("stream: %d %q", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", gw.URL+"/v1/embeddings", `{"model":"m","input":"x"}`, nil); resp.StatusCode != 200 {
		t.Fatalf("empty reply: %d %s", resp.StatusCode, body)
	}
	if _, ok := protos.Load("HTTP/2.0"); !ok {
		t.Fatal("the backend was not reached over HTTP/2")
	}
}
