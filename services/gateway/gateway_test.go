package gateway

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
	"github.com/prometheus/client_golang/prometheus"
)

const testKey = "sk-llmproxy-unit-test-0042"

// sink records published events.
type sink struct {
	mu  sync.Mutex
	evs []*events.RequestCompleted
	ch  chan *events.RequestCompleted
}

func newSink() *sink { return &sink{ch: make(chan *events.RequestCompleted, 100)} }

func (s *sink) Publish(ev *events.RequestCompleted) {
	s.mu.Lock()
	s.evs = append(s.evs, ev)
	s.mu.Unlock()
	select {
	case s.ch <- ev:
	default: // a test that does not read events must not block requests
	}
}

func (s *sink) next(t *testing.T) *events.RequestCompleted {
	t.Helper()
	return s.nextWithin(t, 5*time.Second)
}

// nextWithin is next with its own bound, for a request whose end takes
// long under the race detector on a loaded machine.
func (s *sink) nextWithin(t *testing.T, d time.Duration) *events.RequestCompleted {
	t.Helper()
	select {
	case ev := <-s.ch:
		return ev
	case <-time.After(d):
		t.Fatal("no event published")
		return nil
	}
}

func newTestGateway(t *testing.T, backend string, extra string) (*httptest.Server, *sink) {
	t.Helper()
	yaml := fmt.Sprintf(`
backends:
  - url: %q
    headers: { Authorization: "Bearer backend-secret" }
    models: ["m1", "m2"]
api_keys:
  - key: %q
    id: unit
    user_id: u1
server: { max_body_bytes: 4096 }
%s`, backend, testKey, extra)
	cfg, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return serveConfig(t, cfg)
}

func newTestGatewayFile(t *testing.T, path string) (*httptest.Server, *sink) {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return serveConfig(t, cfg)
}

func serveConfig(t *testing.T, cfg *config.Config) (*httptest.Server, *sink) {
	t.Helper()
	return serveOptions(t, Options{Config: cfg})
}

// serveOptions serves a gateway of opts, its events going to the returned
// sink.
func serveOptions(t *testing.T, opts Options) (*httptest.Server, *sink) {
	t.Helper()
	s := newSink()
	opts.Events = s
	g, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	srv := httptest.NewUnstartedServer(g.Handler())
	srv.Config.ConnContext = g.ConnContext
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, s
}

func do(t *testing.T, method, url string, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func withKey() map[string]string { return map[string]string{"Authorization": "Bearer " + testKey} }

func TestBadInputGetsOpenAIErrors(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
		code                     string
	}{
		{"invalid json", "POST", "/v1/chat/completions", `{"model":`, withKey(), 400, "invalid_json"},
		{"too large", "POST", "/v1/chat/completions", `{"model":"m1","x":"` + strings.Repeat("a", 5000) + `"}`, withKey(), 413, "request_too_large"},
		{"unknown path", "GET", "/v1/nothing", "", withKey(), 404, "unknown_url"},
		{"no key", "POST", "/v1/chat/completions", `{"model":"m1"}`, nil, 401, "invalid_api_key"},
		{"bad key", "POST", "/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer sk-nope-123456789"}, 401, "invalid_api_key"},
		// With both, the bearer token is the key checked.
		{"bad bearer, good x-api-key", "POST", "/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer sk-nope-123456789", "x-api-key": testKey}, 401, "invalid_api_key"},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"m9"}`, withKey(), 404, "model_not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, c.method, gw.URL+c.path, c.body, c.hdr)
			var e struct {
				Error struct{ Message, Type, Code string } `json:"error"`
			}
			if resp.StatusCode != c.status || json.Unmarshal(body, &e) != nil || e.Error.Code != c.code || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("got %d %s, want %d with code %s", resp.StatusCode, body, c.status, c.code)
			}
		})
	}
	// Refused requests are recorded, under the unauthenticated key id when
	// they had no valid key.
	var unauth int
	s.mu.Lock()
	for _, ev := range s.evs {
		if ev.StatusCode == 401 {
			if ev.KeyID != UnauthenticatedKeyID {
				t.Errorf("401 event key id %q", ev.KeyID)
			}
			unauth++
		}
	}
	s.mu.Unlock()
	if unauth != 3 {
		t.Fatalf("%d events for the three 401s", unauth)
	}
	// The process is still healthy and serves a good request.
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"x-api-key": testKey})
	if resp.StatusCode != 200 || string(body) != `{"ok":true}` {
		t.Fatalf("good request after bad ones: %d %s", resp.StatusCode, body)
	}
}

// TestBackendHostHeader: a Host in backends[].headers is the Host every
// request to that backend carries (requests, health checks, model lists):
// net/http writes the request's Host field and drops a Host header.
func TestBackendHostHeader(t *testing.T) {
	hosts := make(chan string, 100)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts <- r.URL.Path + " " + r.Host
		_, _ = w.Write([]byte(`{"data":[{"id":"m1"}]}`))
	}))
	defer backend.Close()
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, headers: {host: vhost.internal}}]\nhealth_check: {path: /health, interval: 50ms}\n", backend.URL))
	gw, _ := serveConfig(t, cfg)
	do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, nil)
	do(t, "GET", gw.URL+"/v1/models", "", nil)
	seen := map[string]bool{}
	deadline := time.After(5 * time.Second)
	for len(seen) < 3 {
		select {
		case h := <-hosts:
			path, host, _ := strings.Cut(h, " ")
			if host != "vhost.internal" {
				t.Fatalf("%s reached the backend with Host %q", path, host)
			}
			seen[path] = true
		case <-deadline:
			t.Fatalf("requests seen: %v; want the proxied one, /v1/models and /health", seen)
		}
	}
}

func TestCredentialsNeverReachTheBackend(t *testing.T) {
	var got http.Header
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		_, _ = w.Write([]byte(`{}`))
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"x-api-key": testKey, "Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Custom": "kept"})
	if got.Get("Authorization") != "Bearer backend-secret" || got.Get("X-Api-Key") != "" || got.Get("X-Hop") != "" || got.Get("X-Custom") != "kept" {
		t.Fatalf("backend saw headers %v", got)
	}
	ev := s.next(t)
	if strings.Contains(ev.APIKey, "0042") && !strings.Contains(ev.APIKey, "…") || ev.APIKey == testKey || ev.KeyID != "unit" || ev.UserID != "u1" {
		t.Fatalf("event key fields: %+v", ev)
	}
}

// TestKeysSentElsewhereNeverReachTheBackend: a key a client sends where
// other APIs take one (Azure's api-key header, a key, api_key, api-key,
// apikey or access_token query parameter, behind a '&' or a ';') is not
// passed on either; other parameters are, with the request's own key,
// written as is or percent-encoded, replaced in their values.
func TestKeysSentElsewhereNeverReachTheBackend(t *testing.T) {
	type seen struct {
		h http.Header
		q string
	}
	got := make(chan seen, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Clone(), r.URL.RawQuery}
		_, _ = w.Write([]byte(`{}`))
	}))
	defer backend.Close()
	gw, _ := newTestGateway(t, backend.URL, "")
	escaped := strings.Replace(url.QueryEscape(testKey), "-", "%2D", 1)
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions?api-version=2024-10-21&key=sk-in-query-1&API_KEY=sk-in-query-2&%61pi-key=sk-in-query-3&x=1;key=sk-in-query-4&apikey=sk-in-query-5;Access_Token=sk-in-query-6"+
		"&foo="+testKey+"&bar=x"+escaped+"y",
		`{"model":"m1"}`, map[string]string{"Authorization": "Bearer " + testKey, "api-key": "sk-azure-style"})
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	s := <-got
	if s.q != "api-version=2024-10-21&x=1;foo=%5BREDACTED%5D&bar=x%5BREDACTED%5Dy" {
		t.Errorf("backend query %q", s.q)
	}
	if s.h.Get("Api-Key") != "" || s.h.Get("Authorization") != "Bearer backend-secret" {
		t.Errorf("backend saw headers %v", s.h)
	}
}

// TestClientLeavesMidStream checks that the backend's request is cancelled
// at once and the delivered tokens are billed as estimated usage.
func TestClientLeavesMidStream(t *testing.T) {
	cancelled := make(chan time.Time, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word%d \"}}]}\n\n", i)
			f.Flush()
			select {
			case <-r.Context().Done():
				cancelled <- time.Now()
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	seen := 0
	for seen < 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "data: ") {
			seen++
		}
	}
	left := time.Now()
	resp.Body.Close()
	select {
	case at := <-cancelled:
		if d := at.Sub(left); d > 100*time.Millisecond {
			t.Fatalf("backend cancelled %s after the client left", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the backend's request was not cancelled")
	}
	ev := s.next(t)
	if ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens < 3 || ev.Usage.PromptTokens == 0 {
		t.Fatalf("event usage %+v source %s", ev.Usage, ev.UsageSource)
	}
}

const estimatedSource = events.UsageSourceEstimated

// TestEstimateCountsTokenIDsAndImages: a prompt the gateway must estimate
// (the backend reports no usage) counts one token per id of a prompt given
// as token ids, and auth.defaults.image_tokens per image, as its
// reservation does: a prompt of ids is not billed as empty.
func TestEstimateCountsTokenIDsAndImages(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}]}`))
	}))
	defer backend.Close()
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\nauth: {defaults: {image_tokens: 100}}\napi_keys: [{key: %q}]\n", backend.URL, testKey))
	for _, c := range []struct {
		path, body string
		prompt     int64
	}{
		{"/v1/embeddings", `{"model":"m1","input":[[1,2,3,4,5,6,7,8,9,10],[11,12,13]]}`, 13},
		{"/v1/completions", `{"model":"m1","prompt":[1,2,3,4,5]}`, 5},
		{"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}]}`, 3 + 3 + 100},
	} {
		resp, body := do(t, "POST", gw.URL+c.path, c.body, withKey())
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", c.path, resp.StatusCode, body)
		}
		if ev := s.next(t); ev.UsageSource != estimatedSource || ev.Usage.PromptTokens != c.prompt {
			t.Errorf("%s: prompt tokens %d (%s), want %d", c.path, ev.Usage.PromptTokens, ev.UsageSource, c.prompt)
		}
	}
}

// streamCutBackend is a backend that sends the events of a stream and then
// drops its connection, as an engine that dies mid-stream.
func streamCutBackend(t *testing.T, events string) *httptest.Server {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte(events))
		w.(http.Flusher).Flush()
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
	}))
	t.Cleanup(backend.Close)
	return backend
}

func TestBackendFailureMidStreamEndsWithErrorEvent(t *testing.T) {
	backend := streamCutBackend(t, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
	gw, _ := newTestGateway(t, backend.URL, "")
	_, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true}`, withKey())
	if !bytes.Contains(body, []byte("event: error")) || !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
		t.Fatalf("stream did not end with an error event: %q", body)
	}
}

// TestStreamWithoutLengthCutBeforeItsEnd: a stream whose reply has no
// length (no Content-Length, not chunked) ends where the connection does,
// so a backend that dies mid-stream cannot be told from the stream's end by
// the framing: one that closes before its format's last event ends the
// client's stream with the error event, as a chunked one cut there does; one
// that sent it ends cleanly. The cut one ended in silence before.
func TestStreamWithoutLengthCutBeforeItsEnd(t *testing.T) {
	const chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
	for _, c := range []struct {
		name, events string
		cut          bool
	}{
		{"cut", chunk, true},
		{"ended", chunk + "data: [DONE]\n\n", false},
		{"ended, last event unterminated", chunk + "data: [DONE]", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				conn, bw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				_, _ = bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + c.events)
				_ = bw.Flush()
				conn.Close()
			}))
			defer backend.Close()
			gw, s := newTestGateway(t, backend.URL, "")
			_, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true}`, withKey())
			ev := s.next(t)
			gotCut := bytes.Contains(body, []byte("event: error"))
			if gotCut != c.cut || !bytes.Contains(body, []byte("data: [DONE]")) || (ev.Error == "backend_stream_error") != c.cut {
				t.Fatalf("stream %q, event error %q; want cut %v", body, ev.Error, c.cut)
			}
		})
	}
}

// TestClientLeavesMidReply: a client that stops taking a non-streamed reply
// part way (its usage, at the end, never read) is billed the text it was
// sent, estimated, as for a stream it left: at least what it read, less than
// the whole reply. It was billed no completion tokens at all.
func TestClientLeavesMidReply(t *testing.T) {
	const words = 4 << 20 // 24 MiB of " hello": more than the sockets hold
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`)
		chunk := []byte(strings.Repeat(" hello", 1<<14))
		for i := 0; i < words>>14; i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
		fmt.Fprintf(w, `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":%d,"total_tokens":%d}}`, words, words+4)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	const read = 1 << 20
	if _, err := io.CopyN(io.Discard, resp.Body, read); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ev := s.next(t)
	if ev.Error != "client_closed_request" || ev.UsageSource != estimatedSource {
		t.Fatalf("event: error %q, usage %+v (%s); want the client's leaving, estimated", ev.Error, ev.Usage, ev.UsageSource)
	}
	if got := ev.Usage.CompletionTokens; got < int64(read/len(" hello")) || got >= words {
		t.Fatalf("completion tokens %d: want at least the %d the client read, less than the reply's %d", got, read/len(" hello"), words)
	}
}

// TestLongReplyWithoutUsageIsEstimated: a whole reply longer than what is
// kept of it (8 MiB), whose backend reports no usage, bills its text,
// estimated, with its finish reason; it billed no completion tokens, and no
// finish reason even with usage.
func TestLongReplyWithoutUsageIsEstimated(t *testing.T) {
	const words = 2 << 20 // 12 MiB of " hello"
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`)
		chunk := strings.Repeat(" hello", 1<<14)
		for range words >> 14 {
			_, _ = io.WriteString(w, chunk)
		}
		_, _ = io.WriteString(w, `"},"finish_reason":"length"}]}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`, withKey())
	if resp.StatusCode != 200 || len(body) < words*len(" hello") {
		t.Fatalf("%d, %d bytes", resp.StatusCode, len(body))
	}
	ev := s.next(t)
	if ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens < words/2 || ev.Usage.CompletionTokens > 2*words || ev.FinishReason != "length" {
		t.Fatalf("event: usage %+v (%s), finish %q; want about %d completion tokens, estimated, and length", ev.Usage, ev.UsageSource, ev.FinishReason, words)
	}
}

// TestEstimateBoundByTheRequestsCap: a reply without usage whose text the
// gateway's tokenizer counts as more tokens than the request's max_tokens
// (times n) let the engine make is billed the cap, not the count; a cap only
// under another spelling, which vLLM ignores, bounds nothing.
func TestEstimateBoundByTheRequestsCap(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		// Words cl100k splits into several tokens each.
		_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`+
			strings.Repeat(" xqzvkj", 40)+`"},"finish_reason":"length"}]}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	for _, c := range []struct {
		caps     string
		atMost   int64
		moreThan int64
	}{
		{`"max_tokens":14`, 14, 13},
		{`"max_tokens":14,"n":2`, 28, 27},
		{`"MAX_TOKENS":14`, 1 << 20, 80},
		{``, 1 << 20, 80},
	} {
		body := `{"model":"m1","messages":[{"role":"user","content":"hi"}]` + map[bool]string{true: "", false: "," + c.caps}[c.caps == ""] + `}`
		if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", body, withKey()); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %.200s", body, resp.StatusCode, b)
		}
		ev := s.next(t)
		if n := ev.Usage.CompletionTokens; ev.UsageSource != estimatedSource || n > c.atMost || n <= c.moreThan {
			t.Errorf("%s: %d completion tokens (%s), want more than %d and at most %d", body, n, ev.UsageSource, c.moreThan, c.atMost)
		}
	}
}

// TestLongEmbeddingsWithoutUsageBillNoCompletion: a whole embeddings reply
// over 8 MiB without usage holds no text past what was kept either: its
// length is not billed as completion tokens.
func TestLongEmbeddingsWithoutUsageBillNoCompletion(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"list","data":[`)
		vec := `{"object":"embedding","index":0,"embedding":[` + strings.TrimSuffix(strings.Repeat("0.0123456,", 1000), ",") + `]}`
		for i := range 1200 { // 12 MiB
			if i > 0 {
				_, _ = io.WriteString(w, ",")
			}
			_, _ = io.WriteString(w, vec)
		}
		_, _ = io.WriteString(w, `],"model":"m1"}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	if resp, body := do(t, "POST", gw.URL+"/v1/embeddings", `{"model":"m1","input":"hi"}`, withKey()); resp.StatusCode != 200 {
		t.Fatalf("%d %.200s", resp.StatusCode, body)
	}
	if ev := s.next(t); ev.Usage.CompletionTokens != 0 {
		t.Fatalf("completion tokens %d for an embeddings reply", ev.Usage.CompletionTokens)
	}
}

// TestClientLeavesMidCompressedReply: the same for a reply the backend
// compressed (passed on compressed): the share of its text the client was
// sent is billed, where nothing was.
func TestClientLeavesMidCompressedReply(t *testing.T) {
	// Words that gzip cannot shrink to nothing: 24 MiB compressed, about.
	var plain bytes.Buffer
	plain.WriteString(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`)
	rng := rand.New(rand.NewPCG(1, 2))
	for plain.Len() < 48<<20 {
		fmt.Fprintf(&plain, " w%x", rng.Uint32())
	}
	plain.WriteString(`"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":9999999,"total_tokens":10000003}}`)
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	_, _ = zw.Write(plain.Bytes())
	_ = zw.Close()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(zipped.Len()))
		_, _ = w.Write(zipped.Bytes())
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Accept-Encoding", "gzip") // as set, the client passes the bytes on compressed
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Its end decompresses what was read of the reply: 2–3 s under the
	// race detector on a quiet machine.
	ev := s.nextWithin(t, 30*time.Second)
	if ev.Error != "client_closed_request" || ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens < 1000 || ev.Usage.CompletionTokens >= 9999999 {
		t.Fatalf("event: error %q, usage %+v (%s); want the share of the text the client was sent, estimated", ev.Error, ev.Usage, ev.UsageSource)
	}
}

// TestReplyCutMidBodyBillsItsText: a non-streamed reply the backend
// breaks off after part of its body bills the text that arrived (and was
// delivered), estimated, not nothing.
func TestReplyCutMidBodyBillsItsText(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n" +
			`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"the quick brown fox jumps over the lazy dog and then`)
		_ = bw.Flush()
		conn.Close()
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	ev := s.next(t)
	if ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens < 10 || ev.Error != "backend_error" {
		t.Fatalf("event: usage %+v (%s), error %q; want the delivered text's tokens, estimated", ev.Usage, ev.UsageSource, ev.Error)
	}
}

// TestLongReplyCutBillsPastWhatWasKept: a reply the backend breaks off
// after more than is kept of it (8 MiB) bills all the text that arrived:
// what was kept, read, and the rest by its length; it billed the first
// 8 MiB alone.
func TestLongReplyCutBillsPastWhatWasKept(t *testing.T) {
	const words = 2 << 20 // 12 MiB of " hello" arrive, of 24 announced
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 25165824\r\n\r\n" +
			`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`)
		chunk := strings.Repeat(" hello", 1<<14)
		for range words >> 14 {
			_, _ = bw.WriteString(chunk)
		}
		_ = bw.Flush()
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	ev := s.next(t)
	if ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens < words*9/10 || ev.Error != "backend_error" {
		t.Fatalf("event: usage %+v (%s), error %q; want about %d completion tokens, estimated", ev.Usage, ev.UsageSource, ev.Error, words)
	}
}

// TestLimitedKeyMustNameItsModel: a key with allowed_models is refused a
// request that names no model (any backend could serve it any model), while
// it still lists its models and runs the ones it may use.
func TestLimitedKeyMustNameItsModel(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte(`{"object":"list","data":[{"id":"m1","object":"model"},{"id":"m2","object":"model"}]}`))
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	const limited = "sk-llmproxy-unit-limited-0043"
	yaml := fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, id: limited, allowed_models: [m1]}]\n", backend.URL, limited)
	gw, s := gatewayFromYAML(t, yaml)
	hdr := map[string]string{"Authorization": "Bearer " + limited}
	cases := []struct {
		name, method, path, body string
		status                   int
	}{
		{"allowed model", "POST", "/v1/chat/completions", `{"model":"m1"}`, 200},
		{"other model", "POST", "/v1/chat/completions", `{"model":"m2"}`, 403},
		{"no model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 403},
		{"empty model", "POST", "/v1/embeddings", `{"model":"","input":"hi"}`, 403},
		{"no model, TGI", "POST", "/generate", `{"inputs":"hi"}`, 403},
		{"model list", "GET", "/v1/models", "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, c.method, gw.URL+c.path, c.body, hdr)
			if resp.StatusCode != c.status {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, c.status)
			}
			ev := s.next(t)
			if c.status != 403 {
				return
			}
			var e struct {
				Error struct{ Message, Type, Code string } `json:"error"`
			}
			if json.Unmarshal(body, &e) != nil || e.Error.Code != "model_not_allowed" || e.Error.Type != "permission_error" || !strings.Contains(e.Error.Message, "m1") {
				t.Fatalf("refusal %s", body)
			}
			if ev.StatusCode != 403 || ev.BackendURL != "" {
				t.Fatalf("event of the refusal: status %d, backend %q", ev.StatusCode, ev.BackendURL)
			}
		})
	}
}

// TestBackendRequestIDsDoNotReplaceTheGateways: the client gets the
// gateway's request ids whatever ids the backend answers with, on plain,
// streamed and on_response replies.
func TestBackendRequestIDsDoNotReplaceTheGateways(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "backend-id-1")
		w.Header()["x-llmproxy-request-id"] = []string{"backend-id-2"}
		b, _ := io.ReadAll(r.Body)
		if bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"a"}}]}`))
	}))
	defer backend.Close()
	script := filepath.Join(t.TempDir(), "on_response.lua")
	if err := os.WriteFile(script, []byte("function on_response(req, resp)\n  return nil\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	plain, _ := newTestGateway(t, backend.URL, "")
	hooked, _ := newTestGateway(t, backend.URL, fmt.Sprintf("lua: {scripts: [%q]}\n", script))
	for _, c := range []struct {
		name, url, body, clientID string
	}{
		{"json", plain.URL, `{"model":"m1"}`, ""},
		{"json with the client's id", plain.URL, `{"model":"m1"}`, "client-id-7"},
		{"stream", plain.URL, `{"model":"m1","stream":true}`, ""},
		{"stream with the client's id", plain.URL, `{"model":"m1","stream":true}`, "client-id-8"},
		{"on_response", hooked.URL, `{"model":"m1"}`, "client-id-9"},
	} {
		t.Run(c.name, func(t *testing.T) {
			hdr := withKey()
			if c.clientID != "" {
				hdr["X-Request-Id"] = c.clientID
			}
			resp, body := do(t, "POST", c.url+"/v1/chat/completions", c.body, hdr)
			gwID := resp.Header.Values("X-Llmproxy-Request-Id")
			want := c.clientID
			if want == "" && len(gwID) == 1 {
				want = gwID[0]
			}
			if resp.StatusCode != 200 || len(gwID) != 1 || !strings.HasPrefix(gwID[0], "req_") {
				t.Fatalf("%d %s; X-LLMProxy-Request-Id %q", resp.StatusCode, body, gwID)
			}
			if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != want {
				t.Fatalf("X-Request-Id %q, want %q", got, want)
			}
		})
	}
}

// recordHandler passes each log record's message and attributes on.
type recordHandler struct {
	attrs []slog.Attr
	out   chan<- map[string]string
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) WithGroup(string) slog.Handler            { return h }
func (h recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recordHandler{attrs: append(append([]slog.Attr(nil), h.attrs...), as...), out: h.out}
}
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message}
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	select {
	case h.out <- m:
	default:
	}
	return nil
}

// TestHealthChangesGoToTheGatewaysLog: a backend's health changes are
// logged through the gateway's logger (JSON in llmproxy serve), not the
// process default.
func TestHealthChangesGoToTheGatewaysLog(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q, name: sick}]\nhealth_check: {path: /health, interval: 20ms, unhealthy_threshold: 1}\napi_keys: [{key: %q}]\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan map[string]string, 100)
	serveOptions(t, Options{Config: cfg, Logger: slog.New(recordHandler{out: lines})})
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-lines:
			if m["msg"] == "backend health changed" {
				if m["component"] != "balancer" || m["backend"] != "sick" || m["healthy"] != "false" {
					t.Fatalf("line %v", m)
				}
				return
			}
		case <-deadline:
			t.Fatal("no health change reached the gateway's logger")
		}
	}
}

// TestStreamWithoutItsContentTypeIsRelayedAsOne: an engine's event stream
// sent without a Content-Type, or with one in another case, is relayed
// event by event (the second event is sent only once the client has the
// first) and its usage read; no content type is made up for it.
func TestStreamWithoutItsContentTypeIsRelayedAsOne(t *testing.T) {
	for _, tc := range []struct{ ctype, first string }{{"", ""}, {"", "d"}, {"", "\xef\xbb"}, {"Text/Event-Stream;charset=UTF-8", ""}} {
		ctype := tc.ctype
		t.Run(fmt.Sprintf("content type %q, first read %q", ctype, tc.first), func(t *testing.T) {
			next := make(chan struct{})
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if ctype == "" {
					w.Header()["Content-Type"] = nil
				} else {
					w.Header().Set("Content-Type", ctype)
				}
				// A first read too short to tell an event stream by.
				first := `data: {"choices":[{"index":0,"delta":{"content":"hello"}}]}` + "\n\n"
				if tc.first != "" {
					if strings.HasPrefix(tc.first, "\xef") {
						first = "\xef\xbb\xbf" + first
					}
					_, _ = io.WriteString(w, tc.first)
					w.(http.Flusher).Flush()
					time.Sleep(50 * time.Millisecond)
					first = first[len(tc.first):]
				}
				_, _ = io.WriteString(w, first)
				w.(http.Flusher).Flush()
				select {
				case <-next:
				case <-time.After(10 * time.Second):
					return
				}
				_, _ = io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":" world"},"finish_reason":"stop"}]}`+"\n\n"+
					`data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}}`+"\n\ndata: [DONE]\n\n")
			}))
			defer backend.Close()
			gw, s := newTestGateway(t, backend.URL, "")
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				close(next)
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := resp.Header.Values("Content-Type"); ctype == "" && len(got) != 0 {
				t.Errorf("Content-Type %q; the backend sent none", got)
			}
			first := make([]byte, 4096)
			n, err := resp.Body.Read(first)
			close(next)
			if err != nil || !strings.Contains(string(first[:n]), "hello") {
				t.Fatalf("first read: %q, %v; want the first event before the backend sends the rest", first[:n], err)
			}
			rest, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(rest), "[DONE]") {
				t.Fatalf("rest: %q", rest)
			}
			ev := s.next(t)
			if ev.UsageSource != events.UsageSourceBackend || ev.Usage.PromptTokens != 11 || ev.Usage.CompletionTokens != 5 || !ev.IsStream {
				t.Fatalf("event: usage %+v (%s), stream %v; want the backend's 11/5", ev.Usage, ev.UsageSource, ev.IsStream)
			}
		})
	}
}

// TestPromptCountAloneEstimatesTheCompletion: a reply whose usage gives
// the prompt's count but not the completion's bills the delivered text,
// estimated, not a completion of 0.
func TestPromptCountAloneEstimatesTheCompletion(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`+strings.Repeat("the quick brown fox ", 30)+`"},"finish_reason":"stop"}],"usage":{"prompt_tokens":21}}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ev := s.next(t)
	if ev.UsageSource != estimatedSource || ev.Usage.PromptTokens != 21 || ev.Usage.CompletionTokens < 100 {
		t.Fatalf("event: usage %+v (%s); want the backend's prompt 21 and the text's ~120 tokens, estimated", ev.Usage, ev.UsageSource)
	}
}

// TestEventLargerThanTheSplitterHoldsIsBilled: an SSE event of more than
// 1 MiB, relayed in pieces as it comes, is still read for its usage (the
// backend's, on the event itself) or its text (estimated).
func TestEventLargerThanTheSplitterHoldsIsBilled(t *testing.T) {
	text := strings.Repeat("hello world ", 120_000) // 1.4 MB
	for _, tc := range []struct {
		name, usage string
		check       func(ev *events.RequestCompleted) bool
	}{
		{"usage on the large event", `,"usage":{"prompt_tokens":13,"completion_tokens":4242,"total_tokens":4255}`, func(ev *events.RequestCompleted) bool {
			return ev.UsageSource == events.UsageSourceBackend && ev.Usage.PromptTokens == 13 && ev.Usage.CompletionTokens == 4242 && ev.FinishReason == "stop"
		}},
		{"no usage", "", func(ev *events.RequestCompleted) bool {
			return ev.UsageSource == estimatedSource && ev.Usage.CompletionTokens > 200_000
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `data: {"choices":[{"index":0,"delta":{"content":"` + text + `"},"finish_reason":"stop"}]` + tc.usage + "}\n\ndata: [DONE]\n\n"
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for b := body; len(b) > 0; {
					n := min(len(b), 100_000)
					_, _ = io.WriteString(w, b[:n])
					w.(http.Flusher).Flush()
					b = b[n:]
				}
			}))
			defer backend.Close()
			gw, s := newTestGateway(t, backend.URL, "")
			resp, got := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`, withKey())
			if resp.StatusCode != 200 || string(got) != body {
				t.Fatalf("status %d, %d bytes; want the backend's %d bytes unchanged", resp.StatusCode, len(got), len(body))
			}
			if ev := s.next(t); !tc.check(ev) {
				t.Fatalf("event: usage %+v (%s), finish %q", ev.Usage, ev.UsageSource, ev.FinishReason)
			}
		})
	}
}

// TestEstimateCountsUnreadBytes: the text of an event too large to be read
// whole is estimated from its length, not billed as nothing.
func TestEstimateCountsUnreadBytes(t *testing.T) {
	ex := usage.NewExtractor(usage.FormatOpenAISSE, usage.Options{})
	ex.Unread(40_000)
	if n := estimateCompletion(ex.Result()); n != 10_000 {
		t.Fatalf("40,000 unread bytes estimated as %d tokens, want 10,000", n)
	}
	ex.Event([]byte(`data: {"choices":[{"index":0,"delta":{"content":"hello world"}}]}` + "\n\n"))
	// With text read too, the unread bytes count at its rate: "hello
	// world" is 2 tokens in 11 bytes.
	if n := estimateCompletion(ex.Result()); n != 2*40_011/11 {
		t.Fatalf("with some text read too: %d tokens, want %d", n, 2*40_011/11)
	}
}

// TestUsageOnChunksHiddenFromAClientThatDidNotAsk: the gateway asks for
// include_usage; an engine that then puts usage on every chunk (vLLM with
// the client's continuous_usage_stats, which it honours only with
// include_usage) or on its finish chunk gives the client chunks without it,
// as the engine would have sent them, and the usage is billed.
func TestUsageOnChunksHiddenFromAClientThatDidNotAsk(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		asked := strings.Contains(string(body), `"include_usage":true`)
		w.Header().Set("Content-Type", "text/event-stream")
		for i, c := range []string{"hel", "lo"} {
			chunk := fmt.Sprintf(`{"id":"c","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}]`, c)
			if asked {
				chunk += fmt.Sprintf(`,"usage":{"prompt_tokens":7,"total_tokens":%d,"completion_tokens":%d}`, 8+i, 1+i)
			}
			_, _ = fmt.Fprintf(w, "data: %s}\n\n", chunk)
		}
		fin := `{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]`
		if asked {
			fin += `,"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}`
		}
		_, _ = fmt.Fprintf(w, "data: %s}\n\ndata: [DONE]\n\n", fin)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true,"stream_options":{"continuous_usage_stats":true},"messages":[{"role":"user","content":"hi"}]}`, withKey())
	if resp.StatusCode != 200 || strings.Contains(string(body), "usage") || !strings.Contains(string(body), `"finish_reason":"stop"`) {
		t.Fatalf("%d %s, want the chunks without usage", resp.StatusCode, body)
	}
	if ev := s.next(t); ev.Usage.PromptTokens != 7 || ev.Usage.CompletionTokens != 3 || ev.UsageSource != events.UsageSourceBackend {
		t.Fatalf("billed %+v (%s), want the engine's 7/3", ev.Usage, ev.UsageSource)
	}
}

// okBackend serves every request a short chat completion with its usage,
// and returns its URL.
func okBackend(t *testing.T) string {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}`)
	}))
	t.Cleanup(backend.Close)
	return backend.URL
}

// TestRefusalEventsCarryNoBody: the event of a request the gateway refused
// (a model the key may not use, a rate limit, a bad key) has no request
// body, which a client could otherwise have the stream keep at will; one a
// backend was sent has it.
func TestRefusalEventsCarryNoBody(t *testing.T) {
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, models: [m1, m2]}]\napi_keys: [{key: %q, id: k, allowed_models: [m1], limits: {requests_per_minute: 1}}]\n", okBackend(t), testKey))
	gw, s := serveOptions(t, Options{Config: cfg, Admitter: ledger.NewMemoryAdmitter(nil, nil)})
	body := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"` + strings.Repeat("x", 1000) + `"}]}`
	}
	for _, c := range []struct {
		model  string
		hdr    map[string]string
		status int
	}{
		{"m1", withKey(), 200},
		{"m2", withKey(), 403},
		{"m1", withKey(), 429},
		{"m1", map[string]string{"Authorization": "Bearer sk-nobody-1234567890"}, 401},
	} {
		resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", body(c.model), c.hdr)
		if resp.StatusCode != c.status {
			t.Fatalf("%s: %d, want %d", c.model, resp.StatusCode, c.status)
		}
		ev := s.next(t)
		has := len(ev.RequestBody) > 0 && string(ev.RequestBody) != "null"
		if has != (c.status == 200) {
			t.Fatalf("%d: the event's request body is %.40q", c.status, ev.RequestBody)
		}
	}
}

// TestRefusalEventsBudget: past logging.refusal_events_per_second (ten
// seconds of them at once), the refusals of a key id, the requests of no
// key together, are counted and not published; another key id's, and any
// request a backend served, still are.
func TestRefusalEventsBudget(t *testing.T) {
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q, models: [m1, m2]}]\napi_keys: [{key: %q, id: k, allowed_models: [m1]}]\nlogging: {refusal_events_per_second: 1}\n", okBackend(t), testKey))
	reg := prometheus.NewRegistry()
	gw, s := serveOptions(t, Options{Config: cfg, Registerer: reg})
	bad := map[string]string{"Authorization": "Bearer sk-nobody-1234567890"}
	count := func(model string, hdr map[string]string, n, status int) {
		t.Helper()
		for range n {
			if resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"`+model+`"}`, hdr); resp.StatusCode != status {
				t.Fatalf("%d, want %d", resp.StatusCode, status)
			}
		}
	}
	count("m1", bad, 30, 401)
	count("m2", withKey(), 30, 403)
	count("m1", withKey(), 5, 200)
	var byKey map[string]int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		byKey = map[string]int{}
		s.mu.Lock()
		for _, ev := range s.evs {
			byKey[fmt.Sprintf("%s %d", ev.KeyID, ev.StatusCode)]++
		}
		n := len(s.evs)
		s.mu.Unlock()
		if n+int(counted(t, reg, "llmproxy_refusal_events_unpublished_total", nil)) == 65 || time.Now().After(deadline) {
			break
		}
	}
	// Ten at once, and one more a second while the requests run.
	for _, k := range []string{"unauthenticated 401", "k 403"} {
		if n := byKey[k]; n < 10 || n > 13 {
			t.Errorf("%s: %d events published of 30, want 10 and about one a second more", k, n)
		}
	}
	if byKey["k 200"] != 5 {
		t.Errorf("%d events of 5 requests served", byKey["k 200"])
	}
	published := byKey["unauthenticated 401"] + byKey["k 403"]
	if n := counted(t, reg, "llmproxy_refusal_events_unpublished_total", nil); int(n) != 60-published {
		t.Errorf("llmproxy_refusal_events_unpublished_total = %v, want %d", n, 60-published)
	}
}

// exactBackend is an OpenAI stream engine that reads its request's names in
// their exact spelling, as vLLM, llama.cpp and TGI do: asked for usage by
// stream_options.include_usage, it sends the usage chunk, or, when fin is
// given, that chunk instead.
func exactBackend(t *testing.T, fin string) *httptest.Server {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		opts, _ := req["stream_options"].(map[string]any)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"},\"finish_reason\":\"stop\"}]}\n\n")
		if opts["include_usage"] == true {
			if fin == "" {
				fin = `{"id":"c","choices":[],"usage":{"prompt_tokens":1000,"total_tokens":1300,"completion_tokens":300}}`
			}
			_, _ = fmt.Fprintf(w, "data: %s\n\n", fin)
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(backend.Close)
	return backend
}

// TestIncludeUsageSpelledOtherwise: a client whose stream_options or
// include_usage is spelled in another case asked an engine that reads the
// exact spelling for nothing: the gateway asks in that spelling, bills the
// engine's usage, and hides its chunk, as from any client that did not ask.
func TestIncludeUsageSpelledOtherwise(t *testing.T) {
	gw, s := newTestGateway(t, exactBackend(t, "").URL, "")
	for _, opts := range []string{
		`"stream_options":{"Include_Usage":true}`,
		`"Stream_Options":{"include_usage":true}`,
		`"stream_options":{"include_usage":false,"INCLUDE_USAGE":true}`,
	} {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true,`+opts+`,"messages":[{"role":"user","content":"hi"}]}`, withKey())
		if resp.StatusCode != 200 || strings.Contains(string(body), "usage") || !strings.Contains(string(body), "hello") {
			t.Fatalf("%s: %d %s, want the content without the usage chunk", opts, resp.StatusCode, body)
		}
		if ev := s.next(t); ev.Usage.PromptTokens != 1000 || ev.Usage.CompletionTokens != 300 || ev.UsageSource != events.UsageSourceBackend {
			t.Fatalf("%s: billed %+v (%s), want the engine's 1000/300", opts, ev.Usage, ev.UsageSource)
		}
	}
	// Asked in the exact spelling, the client gets the chunk.
	_, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true,"stream_options":{"include_usage":true},"messages":[]}`, withKey())
	if !strings.Contains(string(body), `"completion_tokens":300`) {
		t.Fatalf("%s: want the usage chunk", body)
	}
	s.next(t)
}

// TestNullUsageChunkHidden: an engine asked for usage that has none sends
// its usage chunk with "usage":null; a client that did not ask gets no
// empty-choices chunk it would not have had.
func TestNullUsageChunkHidden(t *testing.T) {
	gw, s := newTestGateway(t, exactBackend(t, `{"id":"c","choices":[],"usage":null}`).URL, "")
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`, withKey())
	if resp.StatusCode != 200 || strings.Contains(string(body), `"choices":[]`) || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("%d %q, want the content chunk and [DONE] alone", resp.StatusCode, body)
	}
	if ev := s.next(t); ev.UsageSource != events.UsageSourceEstimated {
		t.Fatalf("usage source %s, want estimated", ev.UsageSource)
	}
}

// TestResponsesStreamCutEndsWithItsOwnErrorEvent: a Responses API stream the
// backend breaks off ends with that API's error event (a "type", no [DONE]:
// clients dispatch on the type), and is recorded with no finish reason, not
// the in_progress of its response.created.
func TestResponsesStreamCutEndsWithItsOwnErrorEvent(t *testing.T) {
	backend := streamCutBackend(t, "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\"}}\n\n"+
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hel\"}\n\n")
	gw, s := newTestGateway(t, backend.URL, "")
	_, body := do(t, "POST", gw.URL+"/v1/responses", `{"model":"m1","stream":true,"input":"hi"}`, withKey())
	want := "event: error\ndata: {\"type\":\"error\",\"code\":\"backend_stream_error\",\"message\":\"the backend failed mid-stream\",\"param\":null}\n\n"
	if !bytes.HasSuffix(body, []byte(want)) || bytes.Contains(body, []byte("[DONE]")) {
		t.Fatalf("stream ended %q, want the Responses error event", body)
	}
	if ev := s.next(t); ev.Error != "backend_stream_error" || ev.FinishReason != "" {
		t.Fatalf("event: error %q finish %q", ev.Error, ev.FinishReason)
	}
}
