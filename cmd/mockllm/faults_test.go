package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDropAfter(t *testing.T) {
	_, ts := newTestServer(t, func(o *options) { o.Tokens = 10 })
	tests := []struct {
		name, path, body string
		after            int
		tokenEvents      func([]byte) int
	}{
		{name: "openai", path: "/v1/chat/completions", body: `{"stream":true,"messages":[]}`, after: 2,
			tokenEvents: func(b []byte) int { return strings.Count(string(b), `"content":"tok`) }},
		{name: "openai before first token", path: "/v1/chat/completions", body: `{"stream":true,"messages":[]}`, after: 0,
			tokenEvents: func(b []byte) int { return strings.Count(string(b), `"content":"tok`) }},
		{name: "tgi", path: "/generate_stream", body: `{"inputs":"x"}`, after: 3,
			tokenEvents: func(b []byte) int { return strings.Count(string(b), `"token":`) }},
		{name: "ollama", path: "/api/chat", body: `{"messages":[]}`, after: 4,
			tokenEvents: func(b []byte) int { return strings.Count(string(b), `"done":false`) }},
		{name: "anthropic", path: "/v1/messages", body: `{"stream":true,"messages":[]}`, after: 1,
			tokenEvents: func(b []byte) int { return strings.Count(string(b), "event: content_block_delta") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, ts, tc.path, tc.body, "X-Mock-Drop-After", string(appendInt(nil, tc.after)))
			b, err := io.ReadAll(resp.Body)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("read error = %v, want unexpected EOF; body %q", err, b)
			}
			if got := tc.tokenEvents(b); got != tc.after {
				t.Fatalf("token events before drop = %d, want %d", got, tc.after)
			}
			for _, end := range []string{"[DONE]", `"done":true`, "message_stop", `"details":{`} {
				if strings.Contains(string(b), end) {
					t.Fatalf("terminating event %q sent before drop: %q", end, b)
				}
			}
		})
	}
	waitMetric(t, ts, "mock_dropped_total", float64(len(tests)))
}

// connCounter starts a mock whose server counts accepted connections.
func connCounter(t *testing.T, mutate func(*options)) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	o := options{knobs: defaultKnobs()}
	o.Tokens = 2
	if mutate != nil {
		mutate(&o)
	}
	var conns atomic.Int64
	ts := httptest.NewUnstartedServer(newServer(o))
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)
	return ts, &conns
}

func TestCloseAfterStream(t *testing.T) {
	tests := []struct {
		name      string
		close     bool
		body      string
		wantConns int64
	}{
		{name: "keep-alive by default", body: `{"stream":true,"messages":[]}`, wantConns: 1},
		{name: "close after stream", close: true, body: `{"stream":true,"messages":[]}`, wantConns: 3},
		{name: "non-stream keeps alive", close: true, body: `{"messages":[]}`, wantConns: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts, conns := connCounter(t, func(o *options) { o.CloseAfterStream = tc.close })
			for range 3 {
				resp := post(t, ts, "/v1/chat/completions", tc.body)
				readAll(t, resp)
				resp.Body.Close()
				if stream := strings.Contains(tc.body, "stream"); resp.Close != (tc.close && stream) {
					t.Fatalf("resp.Close = %v (Connection: %q)", resp.Close, resp.Header.Get("Connection"))
				}
			}
			if got := conns.Load(); got != tc.wantConns {
				t.Fatalf("connections = %d, want %d", got, tc.wantConns)
			}
		})
	}
}

func TestErrorRate(t *testing.T) {
	_, ts := newTestServer(t, func(o *options) { o.ErrorRate = 1; o.ErrorStatus = 503 })
	tests := []struct {
		path, body string
		check      func(map[string]any) bool
	}{
		{"/v1/chat/completions", `{"messages":[]}`, func(m map[string]any) bool {
			e, ok := m["error"].(map[string]any)
			return ok && e["message"] != nil && e["type"] == "ServiceUnavailableError" && e["code"] == 503.0
		}},
		{"/v1/completions", `{"prompt":"x"}`, func(m map[string]any) bool { _, ok := m["error"].(map[string]any); return ok }},
		{"/v1/embeddings", `{"input":"x"}`, func(m map[string]any) bool { _, ok := m["error"].(map[string]any); return ok }},
		{"/generate_stream", `{"inputs":"x"}`, func(m map[string]any) bool {
			return m["error"] != nil && m["error_type"] == "generation"
		}},
		{"/api/chat", `{"messages":[]}`, func(m map[string]any) bool { _, ok := m["error"].(string); return ok }},
		{"/v1/messages", `{"messages":[]}`, func(m map[string]any) bool {
			e, ok := m["error"].(map[string]any)
			return ok && m["type"] == "error" && e["type"] == "api_error"
		}},
	}
	for _, tc := range tests {
		resp := post(t, ts, tc.path, tc.body)
		m := decode(t, readAll(t, resp))
		if resp.StatusCode != 503 || !tc.check(m) {
			t.Fatalf("%s: status %d body %v", tc.path, resp.StatusCode, m)
		}
	}
	if got := metric(t, ts, "mock_errors_injected_total"); got != float64(len(tests)) {
		t.Fatalf("mock_errors_injected_total = %v", got)
	}
	// A per-request header turns injection off again.
	if resp := post(t, ts, "/v1/chat/completions", `{"messages":[]}`, "X-Mock-Error-Rate", "0"); resp.StatusCode != 200 {
		t.Fatalf("status %d with X-Mock-Error-Rate: 0", resp.StatusCode)
	}
}

func TestBadRequests(t *testing.T) {
	_, ts := newTestServer(t, nil)
	tests := []struct {
		name, path, body string
		hdr              []string
	}{
		{name: "chat bad json", path: "/v1/chat/completions", body: `{"messages":`},
		{name: "completions bad json", path: "/v1/completions", body: `not json`},
		{name: "wrong type", path: "/v1/chat/completions", body: `{"messages":"x"}`},
		{name: "bad mock header", path: "/v1/chat/completions", body: `{}`, hdr: []string{"X-Mock-Tokens", "many"}},
		{name: "out of range mock header", path: "/v1/chat/completions", body: `{}`, hdr: []string{"X-Mock-Error-Rate", "2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, ts, tc.path, tc.body, tc.hdr...)
			m := decode(t, readAll(t, resp))
			e, ok := m["error"].(map[string]any)
			if resp.StatusCode != 400 || !ok || e["type"] != "BadRequestError" || e["code"] != 400.0 || e["message"] == "" {
				t.Fatalf("status %d body %v", resp.StatusCode, m)
			}
		})
	}
	for path, want := range map[string]string{"/generate": `"error_type":"validation"`, "/api/generate": `{"error":"`,
		"/v1/messages": `"type":"invalid_request_error"`} {
		resp := post(t, ts, path, `{`)
		if b := readAll(t, resp); resp.StatusCode != 400 || !strings.Contains(string(b), want) {
			t.Fatalf("%s: status %d body %s", path, resp.StatusCode, b)
		}
	}
}

func TestHeaderOverrides(t *testing.T) {
	_, ts := newTestServer(t, func(o *options) { o.Name = "base" })
	start := time.Now()
	resp := post(t, ts, "/v1/completions", `{"prompt":"x"}`,
		"X-Mock-Tokens", "5", "X-Mock-Ttft", "30ms", "X-Mock-Name", "other")
	m := decode(t, readAll(t, resp))
	if time.Since(start) < 30*time.Millisecond {
		t.Fatalf("X-Mock-Ttft not applied")
	}
	if resp.Header.Get("X-Mock-Backend") != "other" {
		t.Fatalf("X-Mock-Backend = %q", resp.Header.Get("X-Mock-Backend"))
	}
	if ch := m["choices"].([]any)[0].(map[string]any); ch["text"] != appendContentString(5) {
		t.Fatalf("text %v", ch["text"])
	}
}

func TestMetricsCounters(t *testing.T) {
	_, ts := newTestServer(t, func(o *options) { o.Waiting = 3; o.GPUCache = 0.25; o.Model = "mm" })
	const n = 4
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// Streams with a long gap stay in flight until the test has
			// seen them all, then the client leaves.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/chat/completions",
				strings.NewReader(`{"stream":true,"messages":[]}`))
			req.Header.Set("X-Mock-Gap", "10s")
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			<-release
		})
	}
	waitMetric(t, ts, "mock_requests_inflight", n)
	if got := metric(t, ts, "vllm:num_requests_running"); got != n {
		t.Fatalf("vllm:num_requests_running = %v", got)
	}
	close(release)
	wg.Wait()
	waitMetric(t, ts, "mock_requests_inflight", 0)
	waitMetric(t, ts, "mock_cancelled_total", n)
	for name, want := range map[string]float64{
		"mock_requests_total": n, "mock_requests_max_inflight": n,
		"vllm:num_requests_waiting": 3, "vllm:gpu_cache_usage_perc": 0.25,
	} {
		if got := metric(t, ts, name); got != want {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
	}

	if resp := post(t, ts, "/mock/load", `{"waiting":7,"gpu_cache":0.9}`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/mock/load status %d", resp.StatusCode)
	}
	if resp := post(t, ts, "/mock/load", `{"gpu_cache":2}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("/mock/load out of range: status %d", resp.StatusCode)
	}
	if resp := post(t, ts, "/mock/reset", ``); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/mock/reset status %d", resp.StatusCode)
	}
	for name, want := range map[string]float64{
		"mock_requests_total": 0, "mock_requests_max_inflight": 0, "mock_cancelled_total": 0,
		"vllm:num_requests_waiting": 7, "vllm:gpu_cache_usage_perc": 0.9,
	} {
		if got := metric(t, ts, name); got != want {
			t.Fatalf("after reset %s = %v, want %v", name, got, want)
		}
	}
	resp, err := ts.Client().Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b := readAll(t, resp); !strings.Contains(string(b), `vllm:num_requests_waiting{model_name="mm"} 7.0`) {
		t.Fatalf("vLLM series format:\n%s", b)
	}
}

func TestCancellation(t *testing.T) {
	tests := []struct {
		name, path, body, hdr, val string
	}{
		{name: "mid-stream", path: "/v1/chat/completions", body: `{"stream":true,"messages":[]}`, hdr: "X-Mock-Gap", val: "10s"},
		{name: "before first byte", path: "/api/chat", body: `{"messages":[]}`, hdr: "X-Mock-Ttft", val: "10s"},
		{name: "non-stream", path: "/v1/messages", body: `{"messages":[]}`, hdr: "X-Mock-Gap", val: "10s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ts := newTestServer(t, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+tc.path, strings.NewReader(tc.body))
			req.Header.Set(tc.hdr, tc.val)
			done := make(chan struct{})
			go func() {
				defer close(done)
				resp, err := ts.Client().Do(req)
				if err == nil {
					// Read the first event, then leave.
					_, _ = resp.Body.Read(make([]byte, 64))
					cancel()
					resp.Body.Close()
				}
			}()
			if strings.Contains(tc.body, "stream") {
				<-done
			} else {
				waitMetric(t, ts, "mock_requests_inflight", 1)
				cancel()
				<-done
			}
			start := time.Now()
			waitMetric(t, ts, "mock_cancelled_total", 1)
			waitMetric(t, ts, "mock_requests_inflight", 0)
			if time.Since(start) > 2*time.Second {
				t.Fatalf("cancellation noticed late")
			}
		})
	}
}
