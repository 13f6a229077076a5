package gateway

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

func gzipBytes(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write([]byte(s))
	_ = zw.Close()
	return b.Bytes()
}

// TestCompressedRepliesPassThroughAndAreMetered: gzip bodies reach the
// client as the backend sent them, and their usage is still read.
func TestCompressedRepliesPassThroughAndAreMetered(t *testing.T) {
	jsonBody := gzipBytes(t, `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}`)
	sseBody := gzipBytes(t, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5,\"total_tokens\":9}}\n\ndata: [DONE]\n\n")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Encoding", "gzip")
		if bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write(sseBody)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jsonBody)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, c := range []struct {
		body       string
		want       []byte
		prompt, co int64
	}{
		{`{"model":"m1"}`, jsonBody, 11, 22},
		{`{"model":"m1","stream":true,"stream_options":{"include_usage":true}}`, sseBody, 4, 5},
	} {
		req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Header.Get("Content-Encoding") != "gzip" || !bytes.Equal(got, c.want) {
			t.Fatalf("compressed body changed: encoding %q, %d bytes vs %d", resp.Header.Get("Content-Encoding"), len(got), len(c.want))
		}
		ev := s.next(t)
		if ev.Usage.PromptTokens != c.prompt || ev.Usage.CompletionTokens != c.co || ev.UsageSource != "backend" {
			t.Fatalf("usage %+v source %s", ev.Usage, ev.UsageSource)
		}
	}
}

func TestModelsIsTheUnionOfBackends(t *testing.T) {
	mk := func(ids ...string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var data []map[string]any
			for _, id := range ids {
				data = append(data, map[string]any{"id": id, "object": "model", "owned_by": "x"})
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data})
		}))
	}
	a, b := mk("alpha", "shared"), mk("beta", "shared")
	defer a.Close()
	defer b.Close()
	yaml := fmt.Sprintf("backends: [{url: %q}, {url: %q}]\napi_keys: [{key: %q}]\n", a.URL, b.URL, testKey)
	gw, _ := gatewayFromYAML(t, yaml)
	resp, body := do(t, "GET", gw.URL+"/v1/models", "", withKey())
	var out struct {
		Object string `json:"object"`
		Data   []struct{ ID string }
	}
	if err := json.Unmarshal(body, &out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var ids []string
	for _, d := range out.Data {
		ids = append(ids, d.ID)
	}
	if out.Object != "list" || strings.Join(ids, ",") != "alpha,beta,shared" {
		t.Fatalf("models %v", ids)
	}

	// A standby (weight 0) reached through a chain from a backend that
	// lists only alpha: the models its engine reports that no backend
	// with a weight serves would be refused 404, and are not listed.
	yaml = fmt.Sprintf("backends: [{url: %q, name: p, models: [alpha]}, {url: %q, name: s, weight: 0}]\nrouting: {fallback: [{primary: p, fallback: [s]}]}\napi_keys: [{key: %q}]\n", a.URL, b.URL, testKey)
	gw, _ = gatewayFromYAML(t, yaml)
	_, body = do(t, "GET", gw.URL+"/v1/models", "", withKey())
	out.Data = nil
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	ids = ids[:0]
	for _, d := range out.Data {
		ids = append(ids, d.ID)
	}
	if strings.Join(ids, ",") != "alpha" {
		t.Fatalf("models with a standby %v, want alpha alone", ids)
	}
}

// TestModelsLeavesOutABackendMarkedDown: the models the config names for a
// backend the health checks mark down are not listed while it is down,
// since no request for them could be routed; those of a backend up are.
func TestModelsLeavesOutABackendMarkedDown(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"object":"list","data":[]}`)
	}))
	defer up.Close()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer sick.Close()
	yaml := fmt.Sprintf("backends: [{url: %q, name: up, models: [alive]}, {url: %q, name: sick, models: [dead]}]\nhealth_check: {path: /health, interval: 20ms, unhealthy_threshold: 1}\napi_keys: [{key: %q}]\n", up.URL, sick.URL, testKey)
	gw, _ := gatewayFromYAML(t, yaml)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, body := do(t, "GET", gw.URL+"/v1/models", "", withKey())
		if resp.StatusCode == 200 && strings.Contains(string(body), `"alive"`) && !strings.Contains(string(body), `"dead"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s, want alive listed and dead left out", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"dead"}`, withKey())
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a request for the model left out: %d, want 503", resp.StatusCode)
	}
}

func TestBackendTotalTimeout(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 100; i++ {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
	defer backend.Close()
	yaml := fmt.Sprintf("backends: [{url: %q, timeout: 300ms}]\napi_keys: [{key: %q}]\n", backend.URL, testKey)
	gw, _ := gatewayFromYAML(t, yaml)
	start := time.Now()
	_, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m","stream":true}`, withKey())
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the stream ran %s past a 300ms total timeout", d)
	}
	if !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) || !bytes.Contains(body, []byte("backend_stream_error")) {
		t.Fatalf("a timed-out stream must end with an error event: %q", body)
	}
}

// TestCaptureAndRedaction: with capture on, the event carries what the
// client received (non-stream body; stream text), bounded, and redaction
// rules remove secrets from the request and the response in the event.
func TestCaptureAndRedaction(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			for _, tok := range []string{"the ", "code ", "is ", "sk-SECRET99 ", strings.Repeat("z", 300)} {
				fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", tok)
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"your key is sk-SECRET99"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`))
	}))
	defer backend.Close()
	extra := "logging: {capture_response: true, max_capture_bytes: 200, redact: ['sk-[A-Za-z0-9]+', '$.metadata.password']}\n"
	gw, s := newTestGateway(t, backend.URL, extra)

	_, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","metadata":{"password":"hunter2"},"messages":[{"role":"user","content":"use sk-SECRET99"}]}`, withKey())
	ev := s.next(t)
	if !strings.Contains(string(body), "sk-SECRET99") {
		t.Fatal("the client's own reply must not be redacted")
	}
	evJSON, _ := json.Marshal(ev)
	if strings.Contains(string(evJSON), "SECRET99") || strings.Contains(string(evJSON), "hunter2") {
		t.Fatalf("a secret reached the event: %s", evJSON)
	}
	if ev.Response == nil || ev.Response.Truncated || !strings.Contains(ev.Response.Content, `"content":"your key is [REDACTED]"`) {
		t.Fatalf("captured non-stream reply: %+v", ev.Response)
	}

	do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true}`, withKey())
	ev = s.next(t)
	if ev.Response == nil || !ev.Response.Truncated || !strings.HasPrefix(ev.Response.Content, "the code is [REDACTED] zz") || len(ev.Response.Content) > 200 {
		t.Fatalf("captured stream text: %+v", ev.Response)
	}
}

// TestCaptureCutKeepsNoPartOfASecret: a secret that the capture bound
// would split (a rule with a minimum length no longer matches its start)
// is redacted whole before the reply is cut, in a non-stream body and in
// a stream's text alike.
func TestCaptureCutKeepsNoPartOfASecret(t *testing.T) {
	const secret = "sk-proj0123456789ABCDEFGHIJabcdefghij0123456789"
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			for _, tok := range []string{strings.Repeat("a", 90), secret, " " + strings.Repeat("z", 300)} {
				fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", tok)
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if bytes.Contains(b, []byte(`"escaped"`)) {
			// As Python's json.dumps writes a reply: the secret's
			// dash escaped, and the reply past the bound.
			_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"caf\u00e9 ` + strings.Replace(secret, "-", `\u002d`, 1) + " " + strings.Repeat("z", 300) + `"}}]}`))
			return
		}
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"` + strings.Repeat("a", 60) + secret + " " + strings.Repeat("z", 300) + `"}}]}`))
	}))
	defer backend.Close()
	extra := "logging: {capture_response: true, max_capture_bytes: 100, redact: ['sk-[A-Za-z0-9]{20,}']}\n"
	gw, s := newTestGateway(t, backend.URL, extra)
	for _, body := range []string{`{"model":"m1"}`, `{"model":"m1","stream":true}`, `{"model":"m1","user":"escaped"}`} {
		do(t, "POST", gw.URL+"/v1/chat/completions", body, withKey())
		ev := s.next(t)
		if ev.Response == nil || !ev.Response.Truncated || len(ev.Response.Content) > 100 {
			t.Fatalf("%s: captured %+v, want at most 100 bytes, truncated", body, ev.Response)
		}
		if strings.Contains(ev.Response.Content, "sk-proj") || strings.Contains(ev.Response.Content, "proj0123") {
			t.Fatalf("%s: part of the secret was captured: %q", body, ev.Response.Content)
		}
	}
}

func TestNoCaptureByDefault(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"private answer"}}]}`))
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, withKey())
	ev := s.next(t)
	evJSON, _ := json.Marshal(ev)
	if ev.Response != nil || strings.Contains(string(evJSON), "private answer") {
		t.Fatalf("response content in the event with capture off: %s", evJSON)
	}
}

// TestFallbackWithoutRetries: a configured fallback chain is used when the
// primary fails even with routing.retry off, in order, and only through
// backends that serve the model.
func TestFallbackWithoutRetries(t *testing.T) {
	var primaryHits, wrongHits int
	var mu sync.Mutex
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		primaryHits++
		mu.Unlock()
		http.Error(w, `{"error":"overloaded"}`, http.StatusServiceUnavailable)
	}))
	defer primary.Close()
	wrongModel := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		wrongHits++
		mu.Unlock()
		_, _ = w.Write([]byte(`{"from":"wrong"}`))
	}))
	defer wrongModel.Close()
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"from":"fallback"}`))
	}))
	defer good.Close()
	yaml := fmt.Sprintf(`
backends:
  - {url: %q, name: primary, models: [m, x]}
  - {url: %q, name: other, models: [x]}
  - {url: %q, name: good, models: [m], weight: 0}
routing:
  retry: {enabled: false}
  fallback:
    - {primary: primary, fallback: [other, good]}
api_keys: [{key: %q}]
`, primary.URL, wrongModel.URL, good.URL, testKey)
	gw, _ := gatewayFromYAML(t, yaml)
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
	if resp.StatusCode != 200 || string(body) != `{"from":"fallback"}` {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if primaryHits != 1 || wrongHits != 0 {
		t.Fatalf("primary tried %d times, the backend without the model %d times", primaryHits, wrongHits)
	}
}

// TestModelsReleasesItsLease: listing models takes a concurrency slot like
// any request and gives it back, so a key with max_concurrent: 1 can list
// models and then still make a request.
func TestModelsReleasesItsLease(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"object":"list","data":[{"id":"m1","object":"model"}]}`))
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, limits: {max_concurrent: 1}}]\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Config: cfg, Events: newSink(), Admitter: ledger.NewMemoryAdmitter(nil, nil), SettleLocally: true})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	for i := 0; i < 3; i++ {
		if resp, body := do(t, "GET", srv.URL+"/v1/models", "", withKey()); resp.StatusCode != 200 {
			t.Fatalf("models call %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m1"}`, withKey()); resp.StatusCode != 200 {
		t.Fatalf("request after listing models: %d %s", resp.StatusCode, body)
	}
}

// TestFinalWordsInTextDoNotEndBilling: generated text that names a stream's
// final event (message_stop, response.completed) does not settle the
// request early; the backend's usage, sent after it, is what is billed.
func TestFinalWordsInTextDoNotEndBilling(t *testing.T) {
	streams := map[string]string{
		"/v1/messages": "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n" +
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"then send {\\\"type\\\":\\\"message_stop\\\"}\"}}\n\n" +
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" and more\"}}\n\n" +
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n" +
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
		"/v1/responses": "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"wait for response.completed\"}\n\n" +
			"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\" then stop\"}\n\n" +
			"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":10,\"output_tokens\":7}}}\n\n",
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, streams[r.URL.Path])
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	for path := range streams {
		t.Run(path, func(t *testing.T) {
			do(t, "POST", gw.URL+path, `{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`, withKey())
			ev := s.next(t)
			if ev.UsageSource != "backend" || ev.Usage.PromptTokens != 10 || ev.Usage.CompletionTokens != 7 {
				t.Fatalf("usage %+v source %s, want the backend's 10 + 7", ev.Usage, ev.UsageSource)
			}
		})
	}
}

// TestFirstByteTimeoutIsRetried: a plain-http backend that does not answer
// a stream within first_byte_timeout is retried (routing.retry.on includes
// timeout by default), and the later answer is served instead of a 504.
func TestFirstByteTimeoutIsRetried(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		n := hits
		mu.Unlock()
		_, _ = io.ReadAll(r.Body) // so the server notices the gateway hang up
		if n == 1 {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	yaml := fmt.Sprintf(`
backends: [{url: %q, first_byte_timeout: 200ms}]
routing: {retry: {enabled: true, max_retries: 2, initial_wait: 10ms, max_wait: 20ms}}
api_keys: [{key: %q}]
`, backend.URL, testKey)
	gw, _ := gatewayFromYAML(t, yaml)
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m","stream":true}`, withKey())
	mu.Lock()
	defer mu.Unlock()
	if resp.StatusCode != 200 || string(body) != `{"ok":true}` || hits != 2 {
		t.Fatalf("%d %s after %d tries, want the second try's answer", resp.StatusCode, body, hits)
	}
}

// TestHeadTimeoutsByKind: a streaming request waits for the answer's head
// up to first_byte_timeout, any other up to response_timeout, since an
// engine sends a non-streamed completion's head only when generation has
// ended: such a completion, slower than a stream may be, is served, and one
// past its own limit is a 504 like a stream's.
func TestHeadTimeoutsByKind(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
			return
		case <-time.After(600 * time.Millisecond):
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	for _, c := range []struct {
		name, timeouts, body string
		want                 int
	}{
		{"stream", "first_byte_timeout: 150ms", `{"model":"m","stream":true}`, 504},
		{"whole answer, default response_timeout", "first_byte_timeout: 150ms", `{"model":"m"}`, 200},
		{"whole answer past response_timeout", "first_byte_timeout: 10s, response_timeout: 150ms", `{"model":"m"}`, 504},
	} {
		t.Run(c.name, func(t *testing.T) {
			gw, _ := gatewayFromYAML(t, fmt.Sprintf(`
backends: [{url: %q, %s}]
routing: {retry: {enabled: false}}
api_keys: [{key: %q}]
`, backend.URL, c.timeouts, testKey))
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", c.body, withKey())
			if resp.StatusCode != c.want {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, c.want)
			}
		})
	}
}

// TestBackendURLCredentials: a backend configured as
// http://user:pass@host is asked with HTTP Basic credentials, and its
// password reaches neither the event's backend_url nor the metrics.
func TestBackendURLCredentials(t *testing.T) {
	auth := make(chan string, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		auth <- r.Header.Get("Authorization")
		_, _ = w.Write([]byte(`{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	withPass := strings.Replace(backend.URL, "http://", "http://bob:s3cret@", 1)
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\n", withPass, testKey))
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if got := <-auth; got != "Basic Ym9iOnMzY3JldA==" {
		t.Errorf("the backend was asked with Authorization %q", got)
	}
	if ev := s.next(t); ev.BackendURL != backend.URL {
		t.Errorf("backend_url %q, want %q", ev.BackendURL, backend.URL)
	}
	_, metrics := do(t, "GET", gw.URL+"/metrics", "", nil)
	if strings.Contains(string(metrics), "s3cret") || !strings.Contains(string(metrics), backend.URL) {
		t.Errorf("metrics name the backend with its password, or not at all")
	}
}

// TestBackendsAreAskedForWhatTheGatewayReads: a stream is asked for
// uncompressed whatever the client accepts, so the usage chunk the client
// did not ask for is still removed; any other reply only in an encoding
// the gateway decompresses to read usage.
func TestBackendsAreAskedForWhatTheGatewayReads(t *testing.T) {
	const usageChunk = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5,\"total_tokens\":9}}\n\n"
	sse := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n" + usageChunk + "data: [DONE]\n\n"
	jsonBody := `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}`
	seen := make(chan string, 1)
	// The backend compresses when asked, as engines behind a compressing
	// server do; it answers an encoding it is not asked for with 406.
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ae := r.Header.Get("Accept-Encoding")
		seen <- ae
		body := jsonBody
		if bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			body = sse
		} else {
			w.Header().Set("Content-Type", "application/json")
		}
		switch {
		case strings.Contains(ae, "br"):
			w.Header().Set("Content-Encoding", "br")
			_, _ = w.Write([]byte("not readable without brotli"))
		case strings.Contains(ae, "gzip"):
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(gzipBytes(t, body))
		default:
			_, _ = io.WriteString(w, body)
		}
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, c := range []struct {
		name, body, accept string
		backendSaw         string
		prompt, completion int64
		encoding           string
	}{
		{"stream, gzip", `{"model":"m1","stream":true}`, "gzip", "identity", 4, 5, ""},
		{"stream, br", `{"model":"m1","stream":true}`, "br, gzip", "identity", 4, 5, ""},
		{"json, br and gzip", `{"model":"m1"}`, "br, gzip", "gzip", 11, 22, "gzip"},
		{"json, br", `{"model":"m1"}`, "br", "identity", 11, 22, ""},
		{"json, browser", `{"model":"m1"}`, "gzip, deflate, br, zstd", "gzip, deflate", 11, 22, "gzip"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(c.body))
			req.Header.Set("Authorization", "Bearer "+testKey)
			req.Header.Set("Accept-Encoding", c.accept)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if ae := <-seen; ae != c.backendSaw {
				t.Fatalf("backend was sent Accept-Encoding %q, want %q", ae, c.backendSaw)
			}
			if enc := resp.Header.Get("Content-Encoding"); enc != c.encoding || resp.StatusCode != 200 {
				t.Fatalf("%d with Content-Encoding %q, want 200 with %q", resp.StatusCode, enc, c.encoding)
			}
			if bytes.Contains(got, []byte(`"usage"`)) && c.encoding == "" && strings.Contains(c.body, "stream") {
				t.Fatalf("the client saw the usage chunk it did not ask for: %q", got)
			}
			ev := s.next(t)
			if ev.Usage.PromptTokens != c.prompt || ev.Usage.CompletionTokens != c.completion || ev.UsageSource != "backend" {
				t.Fatalf("usage %+v source %s", ev.Usage, ev.UsageSource)
			}
		})
	}
}

// TestTGIGenerateCountsFromHeaders: TGI's /generate answers its counts in
// x-prompt-tokens and x-generated-tokens whatever the request asked, so a
// request without parameters.details is billed the engine's counts, not an
// estimate.
func TestTGIGenerateCountsFromHeaders(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Compute-Type", "1-nvidia-a10g")
		w.Header().Set("X-Prompt-Tokens", "6")
		w.Header().Set("X-Generated-Tokens", "5")
		_, _ = io.WriteString(w, `{"generated_text":" Deep learning is a subset"}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	resp, _ := do(t, "POST", gw.URL+"/generate", `{"inputs":"What is deep learning?","parameters":{"max_new_tokens":5}}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ev := s.next(t)
	if ev.UsageSource != "backend" || ev.Usage.PromptTokens != 6 || ev.Usage.CompletionTokens != 5 {
		t.Fatalf("event usage %+v (%s), want TGI's 6 + 5 from its headers", ev.Usage, ev.UsageSource)
	}
}

// TestBackendCountBeyondTheBoundIsEstimated: a backend whose usage claims
// more than events.MaxTokenCount tokens is not believed: the event carries
// the gateway's estimate, marked estimated, within the bound, so the
// meter applies it like any other.
func TestBackendCountBeyondTheBoundIsEstimated(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hello there"}}],"usage":{"prompt_tokens":12,"completion_tokens":400000000000000000,"total_tokens":400000000000000012}}`))
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`, withKey())
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("400000000000000000")) {
		t.Fatalf("the reply is not passed through: %d %s", resp.StatusCode, body)
	}
	ev := s.next(t)
	u := ev.Usage
	if ev.UsageSource != "estimated" || u.PromptTokens <= 0 || u.CompletionTokens <= 0 || u.CompletionTokens > 10 ||
		u.PromptTokens > 100 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
		t.Fatalf("usage %+v source %q; want a small estimate", u, ev.UsageSource)
	}
}
