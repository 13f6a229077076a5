package usage

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

func extract(f Format, opts Options, evs ...string) Result {
	ex := NewExtractor(f, opts)
	for _, ev := range evs {
		ex.Event([]byte(ev))
	}
	return ex.Result()
}

func TestExtractorTextTruncation(t *testing.T) {
	ev := func(s string) string {
		return `data: {"choices":[{"index":0,"delta":{"content":"` + s + `"}}]}` + "\n\n"
	}
	// "é" is two bytes: a cut at 5 bytes must not split it.
	r := extract(FormatOpenAISSE, Options{MaxText: 5}, ev("abcd"), ev("\u00e9f"), ev("g"))
	if r.Text != "abcd" || !r.TextTruncated || r.TextBytes != 8 {
		t.Errorf("got %q truncated=%v bytes=%d", r.Text, r.TextTruncated, r.TextBytes)
	}
	if !utf8.ValidString(r.Text) {
		t.Error("text is not valid UTF-8")
	}
	r = extract(FormatOpenAISSE, Options{MaxText: 6}, ev("abcd"), ev(`\u00e9f`))
	if r.Text != "abcdé" || !r.TextTruncated {
		t.Errorf("got %q truncated=%v", r.Text, r.TextTruncated)
	}
	r = extract(FormatOpenAISSE, Options{MaxText: -1}, ev("abcd"))
	if r.Text != "" || r.TextTruncated || r.TextBytes != 4 {
		t.Errorf("MaxText<0: got %q truncated=%v bytes=%d", r.Text, r.TextTruncated, r.TextBytes)
	}
	r = extract(FormatOpenAISSE, Options{}, ev(strings.Repeat("x", 1000)))
	if len(r.Text) != 1000 || r.TextTruncated {
		t.Errorf("default bound: len %d truncated=%v", len(r.Text), r.TextTruncated)
	}
}

func TestExtractorTextAssembly(t *testing.T) {
	tests := []struct {
		name string
		f    Format
		evs  []string
		want string
	}{
		{"escapes", FormatOpenAISSE, []string{
			`data: {"choices":[{"delta":{"content":"a\"b\\c\/d\n\t\u00e9 \ud83d\ude00"}}]}` + "\n\n",
		}, "a\"b\\c/d\n\té 😀"},
		{"n=2 choices and reasoning", FormatOpenAISSE, []string{
			`data: {"choices":[{"index":0,"delta":{"reasoning_content":"think "}},{"index":1,"delta":{"content":"B"}}]}` + "\n\n",
			`data: {"choices":[{"index":0,"delta":{"content":"A"}}]}` + "\n\n",
		}, "think BA"},
		{"reused slots do not leak", FormatOpenAISSE, []string{
			`data: {"choices":[{"index":0,"delta":{"content":"x","tool_calls":[{"function":{"arguments":"{}"}}]}}]}` + "\n\n",
			`data: {"choices":[{"index":0,"delta":{}}]}` + "\n\n",
		}, "x{}"},
		{"multi data lines", FormatOpenAISSE, []string{
			"data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"hi\"}}]}\n\n",
		}, "hi"},
		{"done and junk ignored", FormatOpenAISSE, []string{
			"data: [DONE]\n\n", ": keep-alive\n\n", "data: {not json\n\n", "\n", "event: x\n\n",
		}, ""},
		{"anthropic thinking", FormatAnthropicSSE, []string{
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\" ok\"}}\n\n",
		}, "hmm ok"},
		{"tgi special token skipped", FormatTGISSE, []string{
			`data:{"index":1,"token":{"id":1,"text":"a","logprob":0,"special":false},"generated_text":null,"details":null}` + "\n\n",
			`data:{"index":2,"token":{"id":2,"text":"</s>","logprob":0,"special":true},"generated_text":"a","details":null}` + "\n\n",
		}, "a"},
	}
	for _, tt := range tests {
		if got := extract(tt.f, Options{}, tt.evs...); got.Text != tt.want {
			t.Errorf("%s: text %q, want %q", tt.name, got.Text, tt.want)
		}
	}
}

func TestExtractorUsageVariants(t *testing.T) {
	tests := []struct {
		name         string
		f            Format
		evs          []string
		prompt, comp int64
		found, known bool
	}{
		{"usage on the last content chunk", FormatOpenAISSE, []string{
			`data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}` + "\n\n",
		}, 3, 1, true, true},
		{"continuous usage: last wins", FormatOpenAISSE, []string{
			`data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}` + "\n\n",
			`data: {"choices":[{"delta":{"content":"y"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}` + "\n\n",
		}, 3, 2, true, true},
		{"no usage", FormatOpenAISSE, []string{
			`data: {"choices":[{"delta":{"content":"x"}}]}` + "\n\n",
		}, 0, 0, false, false},
		{"anthropic left after message_start", FormatAnthropicSSE, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"c\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
		}, 9, 0, false, true},
		{"anthropic cumulative message_delta", FormatAnthropicSSE, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":7}}\n\n",
		}, 15, 7, true, true},
		{"anthropic message_delta repeating input_tokens alone keeps the cache counts", FormatAnthropicSSE, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":20,\"cache_read_input_tokens\":300,\"output_tokens\":1}}}\n\n",
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":9,\"output_tokens\":7}}\n\n",
		}, 329, 7, true, true},
		{"anthropic message_delta with null cache counts keeps them", FormatAnthropicSSE, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":20,\"cache_read_input_tokens\":300,\"output_tokens\":1}}}\n\n",
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":null,\"cache_read_input_tokens\":null,\"output_tokens\":7}}\n\n",
		}, 329, 7, true, true},
		{"a prompt count alone after text: the completion is estimated", FormatOpenAISSE, []string{
			`data: {"choices":[{"delta":{"content":"hello there"}}]}` + "\n\n",
			`data: {"choices":[],"usage":{"prompt_tokens":11}}` + "\n\n",
		}, 11, 0, false, true},
		{"a reply with a prompt count alone", FormatOpenAIJSON, []string{
			`{"choices":[{"message":{"content":"hello there"}}],"usage":{"prompt_tokens":21}}`,
		}, 21, 0, false, true},
		{"an embedding's usage has the prompt alone", FormatOpenAIJSON, []string{
			`{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":5,"total_tokens":5}}`,
		}, 5, 0, true, true},
		{"a completion count of 0 is the backend's", FormatOpenAISSE, []string{
			`data: {"choices":[{"delta":{"content":"x"}}]}` + "\n\n",
			`data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":0}}` + "\n\n",
		}, 4, 0, true, true},
		{"ollama not done", FormatOllamaNDJSON, []string{
			`{"model":"m","response":"x","done":false,"eval_count":3}` + "\n",
		}, 0, 0, false, false},
		{"whole counts written as floats", FormatOpenAIJSON, []string{
			`{"choices":[{"message":{"content":"hello there"}}],"usage":{"prompt_tokens":70.0,"completion_tokens":7e1}}`,
		}, 70, 70, true, true},
		{"a fraction is no count", FormatOpenAIJSON, []string{
			`{"choices":[{"message":{"content":"hello there"}}],"usage":{"prompt_tokens":70.5,"completion_tokens":2}}`,
		}, 0, 2, true, false},
		{"ollama cached prompt", FormatOllamaNDJSON, []string{
			`{"model":"m","response":"","done":true,"eval_count":3}` + "\n",
		}, 0, 3, true, false},
	}
	for _, tt := range tests {
		r := extract(tt.f, Options{}, tt.evs...)
		if r.PromptTokens != tt.prompt || r.CompletionTokens != tt.comp || r.Found != tt.found || r.PromptKnown != tt.known {
			t.Errorf("%s: got %+v", tt.name, r)
		}
	}
}

func TestExtractorSteadyAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	ev := []byte(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}` + "\n\n")
	ex := NewExtractor(FormatOpenAISSE, Options{MaxText: 1 << 20})
	for i := 0; i < 10; i++ {
		ex.Event(ev)
	}
	if n := testing.AllocsPerRun(200, func() { ex.Event(ev) }); n != 0 {
		t.Errorf("allocs per event = %v, want 0", n)
	}
}

// TestTGIResponseHeaders: TGI's /generate sends its counts in headers
// whatever the request's details; a body with details is read over them.
func TestTGIResponseHeaders(t *testing.T) {
	h := http.Header{}
	h.Set("X-Prompt-Tokens", "6")
	h.Set("X-Generated-Tokens", "5")
	ex := NewExtractor(FormatTGIJSON, Options{})
	ex.ResponseHeader(h)
	ex.Body(readGolden(t, "tgi_generate_nodetails.json"))
	if r := ex.Result(); r.PromptTokens != 6 || r.CompletionTokens != 5 || !r.Found || !r.PromptKnown {
		t.Errorf("without details: %+v", r)
	}
	ex = NewExtractor(FormatTGIJSON, Options{})
	ex.ResponseHeader(http.Header{"X-Prompt-Tokens": {"99"}, "X-Generated-Tokens": {"99"}})
	ex.Body(readGolden(t, "tgi_generate.json"))
	if r := ex.Result(); r.PromptTokens != 6 || r.CompletionTokens != 5 {
		t.Errorf("details read over the headers: %+v", r)
	}
	ex = NewExtractor(FormatOpenAIJSON, Options{})
	ex.ResponseHeader(h)
	if r := ex.Result(); r.Found || r.PromptKnown {
		t.Errorf("headers read for another format: %+v", r)
	}
}

// TestExtractorCountBeyondTheBoundIsNoCount: a backend's count above
// events.MaxTokenCount is not taken: its usage is absent (the gateway
// estimates) and flagged, in every format and however the counts come.
func TestExtractorCountBeyondTheBoundIsNoCount(t *testing.T) {
	const huge = "2147483648" // MaxTokenCount + 1
	tests := []struct {
		name string
		f    Format
		body string
		evs  []string
	}{
		{name: "openai prompt", f: FormatOpenAIJSON, body: `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":` + huge + `,"completion_tokens":2}}`},
		{name: "openai completion 18 digits", f: FormatOpenAIJSON, body: `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":999999999999999999}}`},
		{name: "responses api", f: FormatOpenAIJSON, body: `{"output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":3,"output_tokens":` + huge + `}}`},
		{name: "llama.cpp native", f: FormatOpenAIJSON, body: `{"content":"hi","tokens_evaluated":3,"tokens_predicted":` + huge + `}`},
		{name: "openai stream", f: FormatOpenAISSE, evs: []string{
			`data: {"choices":[{"delta":{"content":"hi"}}]}` + "\n\n",
			`data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":` + huge + `}}` + "\n\n",
		}},
		{name: "anthropic summed input", f: FormatAnthropicSSE, evs: []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":2000000000,\"cache_read_input_tokens\":2000000000,\"output_tokens\":1}}}\n\n",
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n",
		}},
		{name: "ollama", f: FormatOllamaJSON, body: `{"message":{"content":"hi"},"done":true,"prompt_eval_count":3,"eval_count":` + huge + `}`},
		{name: "tgi", f: FormatTGIJSON, body: `{"generated_text":"hi","details":{"generated_tokens":` + huge + `,"prefill":[]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ex := NewExtractor(tt.f, Options{})
			if tt.body != "" {
				ex.Body([]byte(tt.body))
			}
			for _, ev := range tt.evs {
				ex.Event([]byte(ev))
			}
			r := ex.Result()
			if r.Found || r.PromptKnown || r.PromptTokens != 0 || r.CompletionTokens != 0 || !r.CountRejected {
				t.Fatalf("Result = found %v, prompt known %v, %d/%d, rejected %v; want no usage, rejected",
					r.Found, r.PromptKnown, r.PromptTokens, r.CompletionTokens, r.CountRejected)
			}
			if r.Text == "" {
				t.Fatal("the text to estimate from is gone")
			}
		})
	}
	// At the bound the counts stand.
	r := extract(FormatOpenAISSE, Options{}, `data: {"choices":[],"usage":{"prompt_tokens":2147483647,"completion_tokens":2147483647}}`+"\n\n")
	if !r.Found || !r.PromptKnown || r.PromptTokens != 2147483647 || r.CompletionTokens != 2147483647 || r.CountRejected {
		t.Fatalf("at the bound: %+v", r)
	}
}
