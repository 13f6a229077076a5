package gateway

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestEngineErrorRepliesAreNotBilled: an engine's own error reply (its
// status and body as each engine writes them) reaches the client
// unchanged, and its event records the failure with no tokens: the engine
// refused or failed the request and generated nothing, so an estimate of
// the prompt (a whole over-long prompt, for a context-length refusal) must
// not be charged. One that reports what it used is billed that, its event
// still backend_error.
func TestEngineErrorRepliesAreNotBilled(t *testing.T) {
	const prompt = `"messages":[{"role":"user","content":"tell me a long story about the sea and the ships on it"}]`
	tests := []struct {
		name, path, req, ctype string
		status                 int
		body                   string
	}{
		{"vllm context length", "/v1/chat/completions", `{"model":"m1",` + prompt + `}`, "application/json", 400,
			`{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.","type":"BadRequestError","param":null,"code":400}}`},
		{"vllm older shape", "/v1/completions", `{"model":"m1","prompt":"tell me a long story about the sea"}`, "application/json", 400,
			`{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}`},
		{"vllm stream refused", "/v1/chat/completions", `{"model":"m1","stream":true,` + prompt + `}`, "application/json", 400,
			`{"error":{"message":"max_tokens must be at least 1, got 0.","type":"BadRequestError","param":null,"code":400}}`},
		{"llama.cpp", "/v1/chat/completions", `{"model":"m1",` + prompt + `}`, "application/json; charset=utf-8", 400,
			`{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":4096}}`},
		{"ollama unknown model", "/api/chat", `{"model":"m1",` + prompt + `}`, "application/json; charset=utf-8", 404,
			`{"error":"model \"m1\" not found, try pulling it first"}`},
		{"tgi validation", "/generate", `{"inputs":"tell me a long story about the sea","parameters":{"max_new_tokens":100000}}`, "application/json", 422,
			`{"error":"Input validation error: max_new_tokens must be <= 4096. Given: 100000","error_type":"validation"}`},
		{"responses failed", "/v1/responses", `{"model":"m1","input":"tell me a long story about the sea"}`, "application/json", 200,
			`{"id":"resp_1","object":"response","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"output":[],"usage":null}`},
		{"anthropic overloaded", "/v1/messages", `{"model":"m1","max_tokens":100,` + prompt + `}`, "application/json", 529,
			`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`},
		// An engine of one's own that reports what it used before it
		// failed: billed as reported, and still its error.
		{"error with usage", "/v1/chat/completions", `{"model":"m1",` + prompt + `}`, "application/json", 500,
			`{"error":{"message":"generation failed","type":"server_error"},"usage":{"prompt_tokens":70,"completion_tokens":9,"total_tokens":79}}`},
	}
	// What the engines reported they used.
	billed := map[string]int64{"error with usage": 79}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer backend.Close()
			gw, s := newTestGateway(t, backend.URL, "")
			resp, body := do(t, "POST", gw.URL+tt.path, tt.req, withKey())
			if resp.StatusCode != tt.status || string(body) != tt.body {
				t.Fatalf("client got %d %s, want the engine's %d %s", resp.StatusCode, body, tt.status, tt.body)
			}
			ev := s.next(t)
			if ev.StatusCode != tt.status || ev.Error != "backend_error" {
				t.Errorf("event status %d error %q, want %d backend_error", ev.StatusCode, ev.Error, tt.status)
			}
			if n := billed[tt.name]; ev.Usage.TotalTokens != n || n == 0 && (ev.Usage.PromptTokens != 0 || ev.Usage.CompletionTokens != 0) {
				t.Errorf("event usage %+v (%s), want %d billed for an error reply", ev.Usage, ev.UsageSource, n)
			}
		})
	}
}

// TestEngineErrorEventsInStreams: an error an engine writes into a stream
// it started with 200 (vLLM's and llama.cpp's data: {"error":...}, TGI's
// error event, Ollama's {"error":...} line) reaches the client unchanged and
// marks the event backend_stream_error. What was delivered before it is
// billed as an estimate; an error before any output (TGI's validation
// errors come this way) bills nothing.
func TestEngineErrorEventsInStreams(t *testing.T) {
	const chat = `{"model":"m1","stream":true,"messages":[{"role":"user","content":"tell me a long story about the sea and the ships on it"}]}`
	tests := []struct {
		name, path, req, ctype, body string
		billed                       bool
	}{
		{"vllm mid-stream", "/v1/chat/completions", chat, "text/event-stream",
			"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Once upon a time\"},\"finish_reason\":null}]}\n\n" +
				"data: {\"error\": {\"message\": \"The engine is dead.\", \"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}\n\n" +
				"data: [DONE]\n\n", true},
		{"llama.cpp before output", "/v1/chat/completions", chat, "text/event-stream",
			"data: {\"error\":{\"code\":500,\"message\":\"failed to decode the batch\",\"type\":\"server_error\"}}\n\n", false},
		{"tgi validation", "/generate_stream", `{"inputs":"tell me a long story about the sea","parameters":{"max_new_tokens":100000}}`, "text/event-stream",
			"data:{\"error\":\"Input validation error: `max_new_tokens` must be <= 4096. Given: 100000\",\"error_type\":\"validation\"}\n\n", false},
		{"ollama mid-stream", "/api/chat", `{"model":"m1","messages":[{"role":"user","content":"tell me a long story about the sea"}]}`, "application/x-ndjson",
			"{\"model\":\"m1\",\"created_at\":\"2024-07-22T20:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Once upon a time\"},\"done\":false}\n" +
				"{\"error\":\"an error was encountered while running the model: unexpected EOF\"}\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer backend.Close()
			gw, s := newTestGateway(t, backend.URL, "")
			resp, body := do(t, "POST", gw.URL+tt.path, tt.req, withKey())
			if resp.StatusCode != 200 || string(body) != tt.body {
				t.Fatalf("client got %d %q, want the engine's stream %q", resp.StatusCode, body, tt.body)
			}
			ev := s.next(t)
			if ev.Error != "backend_stream_error" {
				t.Errorf("event error %q, want backend_stream_error", ev.Error)
			}
			if tt.billed && (ev.UsageSource != estimatedSource || ev.Usage.PromptTokens == 0 || ev.Usage.CompletionTokens == 0) {
				t.Errorf("event usage %+v (%s), want an estimate of what was delivered", ev.Usage, ev.UsageSource)
			}
			if !tt.billed && ev.Usage.TotalTokens != 0 {
				t.Errorf("event usage %+v (%s), want none billed for an error before any output", ev.Usage, ev.UsageSource)
			}
		})
	}
}

// TestStreamRequestsAreStreamsInTheirEvent: a request that asks for a
// stream the way its API does (Ollama's chat and generate without
// "stream", TGI's /generate_stream) is recorded as one, is_stream true,
// also when the backend's error reply means nothing was streamed.
func TestStreamRequestsAreStreamsInTheirEvent(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"error":"model failed to load"}`))
	}))
	defer backend.Close()
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\n", backend.URL, testKey))
	for _, c := range []struct {
		path, body string
		stream     bool
	}{
		{"/api/chat", `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`, true},
		{"/api/generate", `{"model":"m1","prompt":"hi"}`, true},
		{"/api/chat", `{"model":"m1","stream":false,"messages":[{"role":"user","content":"hi"}]}`, false},
		{"/generate_stream", `{"inputs":"hi"}`, true},
		{"/generate", `{"inputs":"hi"}`, false},
		{"/v1/chat/completions", `{"model":"m1","stream":true}`, true},
		{"/v1/chat/completions", `{"model":"m1"}`, false},
	} {
		resp, body := do(t, "POST", gw.URL+c.path, c.body, withKey())
		if resp.StatusCode != 500 {
			t.Fatalf("%s: %d %s", c.path, resp.StatusCode, body)
		}
		if ev := s.next(t); ev.IsStream != c.stream {
			t.Errorf("%s %s: is_stream %v, want %v", c.path, c.body, ev.IsStream, c.stream)
		}
	}
}
