package usage

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// golden describes one capture in testdata/ and what must be read from it.
type golden struct {
	file   string
	format Format
	want   Result
}

var goldens = []golden{
	{"openai_chat_stream.sse", FormatOpenAISSE, Result{
		PromptTokens: 20, CompletionTokens: 10, Found: true, PromptKnown: true,
		FinishReason: "stop", Model: "Qwen/Qwen2.5-7B-Instruct",
		Text: "Hello! How can I help you today?"}},
	{"openai_chat_stream_tools.sse", FormatOpenAISSE, Result{
		PromptTokens: 82, CompletionTokens: 17, Found: true, PromptKnown: true,
		FinishReason: "tool_calls", Model: "gpt-4o-mini-2024-07-18",
		Text: `{"location":"Paris, France"}`}},
	{"openai_chat.json", FormatOpenAIJSON, Result{
		PromptTokens: 25, CompletionTokens: 8, Found: true, PromptKnown: true,
		FinishReason: "stop", Model: "Qwen/Qwen2.5-7B-Instruct",
		Text: "Paris is the capital of France."}},
	{"openai_completions_stream.sse", FormatOpenAISSE, Result{
		PromptTokens: 5, CompletionTokens: 5, Found: true, PromptKnown: true,
		FinishReason: "length", Model: "Qwen/Qwen2.5-7B-Instruct",
		Text: " a city of light."}},
	{"openai_completions.json", FormatOpenAIJSON, Result{
		PromptTokens: 5, CompletionTokens: 5, Found: true, PromptKnown: true,
		FinishReason: "length", Model: "Qwen/Qwen2.5-7B-Instruct",
		Text: " a city of light."}},
	{"openai_embeddings.json", FormatOpenAIJSON, Result{
		PromptTokens: 8, Found: true, PromptKnown: true,
		Model: "text-embedding-3-small"}},
	{"openai_responses.json", FormatOpenAIJSON, Result{
		PromptTokens: 36, CompletionTokens: 87, Found: true, PromptKnown: true,
		FinishReason: "completed", Model: "gpt-4.1-2025-04-14",
		Text: "In a peaceful grove beneath a silver moon."}},
	{"openai_responses_stream.sse", FormatOpenAISSE, Result{
		PromptTokens: 36, CompletionTokens: 87, Found: true, PromptKnown: true,
		FinishReason: "completed", Model: "gpt-4.1-2025-04-14",
		Text: "In a peaceful grove beneath a silver moon."}},
	{"anthropic_messages.json", FormatAnthropicJSON, Result{
		PromptTokens: 572, CompletionTokens: 89, Found: true, PromptKnown: true,
		FinishReason: "tool_use", Model: "claude-sonnet-4-20250514",
		Text: `I'll check the weather.{"location":"San Francisco, CA"}`}},
	{"anthropic_messages_stream.sse", FormatAnthropicSSE, Result{
		PromptTokens: 500, CompletionTokens: 89, Found: true, PromptKnown: true,
		FinishReason: "tool_use", Model: "claude-sonnet-4-20250514",
		Text: `Okay, let me check the weather.{"location": "San Francisco, CA"}`}},
	{"ollama_chat_stream.ndjson", FormatOllamaNDJSON, Result{
		PromptTokens: 26, CompletionTokens: 6, Found: true, PromptKnown: true,
		FinishReason: "stop", Model: "llama3.2", Text: "The sky is blue."}},
	{"ollama_chat.json", FormatOllamaJSON, Result{
		PromptTokens: 122, CompletionTokens: 33, Found: true, PromptKnown: true,
		FinishReason: "stop", Model: "llama3.2",
		Text: `{"format":"celsius","location":"Paris, FR"}`}},
	{"ollama_generate_stream.ndjson", FormatOllamaNDJSON, Result{
		PromptTokens: 31, CompletionTokens: 5, Found: true, PromptKnown: true,
		FinishReason: "length", Model: "llama3.2",
		Text: "Because of Rayleigh scattering."}},
	{"ollama_generate.json", FormatOllamaJSON, Result{
		PromptTokens: 26, CompletionTokens: 290, Found: true, PromptKnown: true,
		FinishReason: "stop", Model: "llama3.2",
		Text: "Because of Rayleigh scattering."}},
	{"ollama_embed.json", FormatOllamaJSON, Result{
		PromptTokens: 8, Found: true, PromptKnown: true, Model: "all-minilm"}},
	{"llamacpp_completions_native.json", FormatOpenAIJSON, Result{
		PromptTokens: 6, CompletionTokens: 8, Found: true, PromptKnown: true,
		FinishReason: "stop", Model: "qwen2.5-7b-instruct-q4_k_m.gguf",
		Text: " Paris, the city of light."}},
	{"llamacpp_completions_native_stream.sse", FormatOpenAISSE, Result{
		PromptTokens: 6, CompletionTokens: 5, Found: true, PromptKnown: true,
		FinishReason: "length", Model: "qwen2.5-7b-instruct-q4_k_m.gguf",
		Text: " Paris, the city of light."}},
	{"tgi_generate.json", FormatTGIJSON, Result{
		PromptTokens: 6, CompletionTokens: 5, Found: true, PromptKnown: true,
		FinishReason: "length", Text: " Deep learning is a subset"}},
	{"tgi_generate_nodetails.json", FormatTGIJSON, Result{
		Text: " Deep learning is a subset"}},
	{"tgi_generate_stream.sse", FormatTGISSE, Result{
		PromptTokens: 6, CompletionTokens: 6, Found: true, PromptKnown: true,
		FinishReason: "eos_token", Text: " Deep learning is a subset"}},
	{"tgi_generate_stream_v1.sse", FormatTGISSE, Result{
		CompletionTokens: 6, Found: true,
		FinishReason: "eos_token", Text: " Deep learning is a subset"}},
}

func readGolden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run passes b through a Splitter and an Extractor the way the proxy does,
// feeding it in pieces of at most chunk bytes (0: all at once), and checks
// that the emitted pieces reproduce b.
func run(t testing.TB, f Format, b []byte, chunk int) Result {
	t.Helper()
	ex := NewExtractor(f, Options{})
	if !f.Streaming() {
		ex.Body(b)
		return ex.Result()
	}
	sp := NewSplitter(f)
	var out bytes.Buffer
	emit := func(ev []byte) error {
		out.Write(ev)
		ex.Event(ev)
		return nil
	}
	if chunk <= 0 {
		chunk = len(b)
	}
	for p := b; len(p) > 0; {
		n := min(chunk, len(p))
		if err := sp.Feed(p[:n], emit); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := sp.Flush(emit); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), b) {
		t.Fatalf("emitted bytes differ from input")
	}
	return ex.Result()
}

func init() {
	for i := range goldens {
		goldens[i].want.TextBytes = int64(len(goldens[i].want.Text))
	}
}

func TestGolden(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			b := readGolden(t, g.file)
			if got := DetectFormat(pathFor(g.file), contentTypeFor(g.format)); got != g.format {
				t.Errorf("DetectFormat = %v, want %v", got, g.format)
			}
			for _, chunk := range []int{0, 1, 7, 64} {
				if got := run(t, g.format, b, chunk); got != g.want {
					t.Errorf("chunk %d:\n got %+v\nwant %+v", chunk, got, g.want)
				}
			}
		})
	}
}

// TestGoldenCRLF replays the SSE captures with CRLF line ends.
func TestGoldenCRLF(t *testing.T) {
	for _, g := range goldens {
		if !g.format.sse() {
			continue
		}
		t.Run(g.file, func(t *testing.T) {
			b := bytes.ReplaceAll(readGolden(t, g.file), []byte("\n"), []byte("\r\n"))
			for _, chunk := range []int{0, 1, 5} {
				if got := run(t, g.format, b, chunk); got != g.want {
					t.Errorf("chunk %d:\n got %+v\nwant %+v", chunk, got, g.want)
				}
			}
		})
	}
}

func pathFor(file string) string {
	switch {
	case bytes.HasPrefix([]byte(file), []byte("openai_chat")):
		return "/v1/chat/completions"
	case bytes.HasPrefix([]byte(file), []byte("openai_completions")), bytes.HasPrefix([]byte(file), []byte("llamacpp_completions")):
		return "/v1/completions"
	case bytes.HasPrefix([]byte(file), []byte("openai_embeddings")):
		return "/v1/embeddings"
	case bytes.HasPrefix([]byte(file), []byte("openai_responses")):
		return "/v1/responses"
	case bytes.HasPrefix([]byte(file), []byte("anthropic")):
		return "/v1/messages"
	case bytes.HasPrefix([]byte(file), []byte("ollama_chat")):
		return "/api/chat"
	case bytes.HasPrefix([]byte(file), []byte("ollama_generate")):
		return "/api/generate"
	case bytes.HasPrefix([]byte(file), []byte("ollama_embed")):
		return "/api/embed"
	case bytes.HasPrefix([]byte(file), []byte("tgi_generate_stream")):
		return "/generate_stream"
	}
	return "/generate"
}

func contentTypeFor(f Format) string {
	switch f {
	case FormatOllamaNDJSON:
		return "application/x-ndjson"
	case FormatOllamaJSON:
		return "application/json; charset=utf-8"
	}
	if f.sse() {
		return "text/event-stream"
	}
	return "application/json"
}

func TestDetectFormat(t *testing.T) {
	tests := []struct {
		path, ct string
		want     Format
	}{
		{"/v1/chat/completions", "text/event-stream; charset=utf-8", FormatOpenAISSE},
		{"/v1/chat/completions", "application/json", FormatOpenAIJSON},
		{"/v1/completions", "Text/Event-Stream", FormatOpenAISSE},
		{"/v1/embeddings", "application/json", FormatOpenAIJSON},
		{"/v1/responses", "text/event-stream", FormatOpenAISSE},
		{"/v1/responses", "", FormatOpenAIJSON},
		{"/v1/messages", "text/event-stream", FormatAnthropicSSE},
		{"/v1/messages?beta=true", "application/json", FormatAnthropicJSON},
		{"/api/chat", "application/x-ndjson", FormatOllamaNDJSON},
		{"/api/chat", "application/json; charset=utf-8", FormatOllamaJSON},
		{"/api/generate", "", FormatOllamaNDJSON},
		{"/api/embed", "", FormatOllamaJSON},
		{"/generate", "application/json", FormatTGIJSON},
		{"/generate", "text/event-stream", FormatTGISSE},
		{"/generate_stream", "", FormatTGISSE},
		{"/generate_stream", "text/event-stream", FormatTGISSE},
		{"/v1/models", "application/json", FormatOpenAIJSON},
	}
	for _, tt := range tests {
		if got := DetectFormat(tt.path, tt.ct); got != tt.want {
			t.Errorf("DetectFormat(%q, %q) = %v, want %v", tt.path, tt.ct, got, tt.want)
		}
	}
}

// TestSniffFormat: a body that opens an event stream is one when its
// content type is missing or unknown, never against a known one.
func TestSniffFormat(t *testing.T) {
	tests := []struct {
		path, ct, first string
		want            Format
	}{
		{"/v1/chat/completions", "", "data: {\"choices\":[]}\n\n", FormatOpenAISSE},
		{"/v1/chat/completions", "text/plain", "\xef\xbb\xbf\r\nevent: x\n", FormatOpenAISSE},
		{"/v1/chat/completions", "", ": ping\n\n", FormatOpenAISSE},
		{"/v1/chat/completions", "", "id: 1\n", FormatOpenAISSE},
		{"/v1/chat/completions", "", `{"choices":[]}`, FormatOpenAIJSON},
		{"/v1/chat/completions", "application/json", "data: x\n\n", FormatOpenAIJSON},
		{"/v1/messages", "", "event: message_start\n", FormatAnthropicSSE},
		{"/generate", "", "data: {}\n\n", FormatTGISSE},
		{"/api/chat", "", "data: {}\n", FormatOllamaNDJSON},
		{"/api/embed", "", "data: {}\n", FormatOllamaJSON},
		{"/v1/chat/completions", "", "dat", FormatOpenAIJSON},
	}
	for _, tt := range tests {
		if got := SniffFormat(tt.path, tt.ct, []byte(tt.first)); got != tt.want {
			t.Errorf("SniffFormat(%q, %q, %q) = %v, want %v", tt.path, tt.ct, tt.first, got, tt.want)
		}
	}
	for ct, want := range map[string]bool{"text/event-stream": true, "Text/Event-Stream; charset=UTF-8": true, "application/x-ndjson": true, "APPLICATION/NDJSON": true, "application/json": false, "": false} {
		if IsStreamType(ct) != want {
			t.Errorf("IsStreamType(%q) = %v, want %v", ct, !want, want)
		}
	}
}

func TestIsUsageOnlyChunk(t *testing.T) {
	tests := []struct {
		name string
		ev   string
		want bool
	}{
		{"vllm usage chunk", `data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1}}` + "\n\n", true},
		{"spaced", "data: {\"choices\" : [ ], \"usage\": {\"prompt_tokens\": 1}}\r\n\r\n", true},
		{"two data lines", "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\n", true},
		{"content chunk usage null", `data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}` + "\n\n", false},
		{"empty choices usage null", `data: {"choices":[],"usage":null}` + "\n\n", true},
		{"empty choices usage a number", `data: {"choices":[],"usage":0}` + "\n\n", false},
		{"last content chunk with usage", `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}` + "\n\n", false},
		{"no usage", `data: {"choices":[]}` + "\n\n", false},
		{"choices nested only", `data: {"x":{"choices":[]},"choices":[{"index":0}],"usage":{"prompt_tokens":1}}` + "\n\n", false},
		{"done", "data: [DONE]\n\n", false},
		{"no data", ": ping \"usage\" \"choices\":[]\n\n", false},
	}
	for _, tt := range tests {
		if got := IsUsageOnlyChunk([]byte(tt.ev)); got != tt.want {
			t.Errorf("%s: IsUsageOnlyChunk = %v, want %v", tt.name, got, tt.want)
		}
	}
	// The captures hold exactly one such chunk each.
	for _, name := range []string{"openai_chat_stream.sse", "openai_chat_stream_tools.sse", "openai_completions_stream.sse"} {
		n := 0
		sp := NewSplitter(FormatOpenAISSE)
		_ = sp.Feed(readGolden(t, name), func(ev []byte) error {
			if IsUsageOnlyChunk(ev) {
				n++
			}
			return nil
		})
		if n != 1 {
			t.Errorf("%s: %d usage-only chunks, want 1", name, n)
		}
	}
}

func TestIsUsageOnlyChunkNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	ev := []byte(`data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}` + "\n\n")
	if n := testing.AllocsPerRun(100, func() { IsUsageOnlyChunk(ev) }); n != 0 {
		t.Errorf("allocs = %v, want 0", n)
	}
}
