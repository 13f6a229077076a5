package usage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// embeddingsBody is an OpenAI embeddings reply of n vectors of dim
// numbers, usage last, as the engines write it.
func embeddingsBody(n, dim int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"object":"list","data":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for d := range dim {
			if d > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%.6f", float64((i*dim+d)%1000)/1000-0.5)
		}
		b.WriteString("]}")
	}
	b.WriteString(`],"model":"text-embedding-3-small","usage":{"prompt_tokens":4096,"total_tokens":4096}}`)
	return b.Bytes()
}

func TestBodyTail(t *testing.T) {
	emb := embeddingsBody(64, 256)
	cases := []struct {
		name               string
		f                  Format
		body               string
		tail               int // bytes of body given; 0: all
		found              bool
		prompt, completion int64
	}{
		{"embeddings", FormatOpenAIJSON, string(emb), 4096, true, 4096, 0},
		{"embeddings, tail cut inside a number", FormatOpenAIJSON, string(emb), 97, true, 4096, 0},
		{"usage followed by members", FormatOpenAIJSON,
			`{"id":"x","choices":[{"message":{"content":"` + strings.Repeat("ab", 500) + `"}}],"usage":{"prompt_tokens":3,"completion_tokens":1000,"total_tokens":1003},"system_fingerprint":null,"kv_transfer_params":{"a":[1,{"b":"}"}]}}` + "\n",
			300, true, 3, 1000},
		{"strings that look like members", FormatOpenAIJSON,
			`{"choices":[{"message":{"content":"` + strings.Repeat("x", 200) + `\",\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99}}, \\\\\",\\\\\"usage\\\\\":{} \\\\"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			150, true, 1, 2},
		{"a string ending in backslashes", FormatOpenAIJSON,
			`{"model":"` + strings.Repeat("y", 100) + `","note":"a\\\\","usage":{"prompt_tokens":5,"completion_tokens":6}}`,
			90, true, 5, 6},
		{"usage nested in a trailing member", FormatOpenAIJSON,
			`{"model":"m","data":[{"usage":{"prompt_tokens":7,"completion_tokens":7}}]}`, 0, false, 0, 0},
		{"usage cut by the tail", FormatOpenAIJSON,
			`{"model":"` + strings.Repeat("z", 100) + `","usage":{"prompt_tokens":5,"completion_tokens":6}}`,
			30, false, 0, 0},
		{"only part of the string before usage", FormatOpenAIJSON,
			`{"choices":[{"text":"` + strings.Repeat("q", 100) + `"}],"usage":{"prompt_tokens":5,"completion_tokens":6}}`,
			60, true, 5, 6},
		{"whole body in the tail", FormatOpenAIJSON,
			`{"usage":{"prompt_tokens":5,"completion_tokens":6}}`, 0, true, 5, 6},
		{"not an object", FormatOpenAIJSON, `[1,2,{"usage":{"prompt_tokens":5}}]`, 0, false, 0, 0},
		{"truncated body", FormatOpenAIJSON, `{"data":[1,2],"usage":{"prompt_tokens":5,"completion_tokens":6`, 0, false, 0, 0},
		{"anthropic message", FormatAnthropicJSON,
			`{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"` + strings.Repeat("v", 300) + `"}],"model":"claude","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_read_input_tokens":3,"output_tokens":400}}`,
			150, true, 15, 400},
		{"responses", FormatOpenAIJSON,
			`{"id":"resp_1","object":"response","status":"completed","model":"m","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"` + strings.Repeat("u", 300) + `"}]}],"usage":{"input_tokens":9,"output_tokens":310,"total_tokens":319}}`,
			100, true, 9, 310},
		{"ollama embed", FormatOllamaJSON,
			`{"model":"all-minilm","embeddings":[[` + strings.Repeat("0.01,", 200) + `0.02]],"total_duration":1,"load_duration":1,"prompt_eval_count":8}`,
			80, true, 8, 0},
		{"ollama chat", FormatOllamaJSON,
			`{"model":"llama3.2","message":{"role":"assistant","content":"` + strings.Repeat("w", 300) + `"},"done_reason":"stop","done":true,"total_duration":4,"prompt_eval_count":26,"eval_count":290}`,
			100, true, 26, 290},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if valid := json.Valid([]byte(c.body)); valid != (c.name != "truncated body") {
				t.Fatalf("the body's validity is %v", valid)
			}
			tail := []byte(c.body)
			if c.tail > 0 {
				tail = tail[len(tail)-c.tail:]
			}
			keep := string(tail)
			ex := NewExtractor(c.f, Options{})
			ex.BodyTail(tail)
			r := ex.Result()
			if r.Found != c.found || r.PromptTokens != c.prompt || r.CompletionTokens != c.completion {
				t.Fatalf("found %v, %d + %d; want %v, %d + %d", r.Found, r.PromptTokens, r.CompletionTokens, c.found, c.prompt, c.completion)
			}
			if string(tail) != keep {
				t.Fatal("BodyTail modified its input")
			}
		})
	}
}

// FuzzBodyTail: whatever the cut, BodyTail never reads a usage that is not
// the body's own top-level one.
func FuzzBodyTail(f *testing.F) {
	f.Add([]byte(`{"a":"x\\\"","usage":{"prompt_tokens":5,"completion_tokens":6}}`), uint16(20))
	f.Add(embeddingsBody(2, 8), uint16(90))
	f.Add([]byte(`{"data":[{"usage":{"prompt_tokens":7}}],"usage":{"prompt_tokens":1}}`), uint16(40))
	f.Fuzz(func(t *testing.T, body []byte, cut uint16) {
		k := min(int(cut), len(body))
		tail := body[len(body)-k:]
		ex := NewExtractor(FormatOpenAIJSON, Options{})
		ex.BodyTail(tail)
		got := ex.Result()
		if !got.Found || !json.Valid(body) || bytes.Contains(body, []byte(`"type"`)) {
			return
		}
		full := NewExtractor(FormatOpenAIJSON, Options{})
		full.Body(body)
		want := full.Result()
		if !want.Found || got.PromptTokens != want.PromptTokens || got.CompletionTokens != want.CompletionTokens {
			t.Fatalf("tail %q of %q: %+v, whole body: %+v", tail, body, got, want)
		}
	})
}

// TestBodyTailFinishReason: the finish reason of a reply whose choices begin
// before the tail is read from the tail, and a member's name inside a
// string (its quotes escaped) is not taken for one.
func TestBodyTailFinishReason(t *testing.T) {
	cases := []struct {
		name string
		f    Format
		body string
		want string
	}{
		{"chat completion", FormatOpenAIJSON,
			`{"choices":[{"index":0,"message":{"content":"` + strings.Repeat("ab", 500) + `"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1000}}`, "length"},
		{"chat completion without usage", FormatOpenAIJSON,
			`{"choices":[{"index":0,"message":{"content":"` + strings.Repeat("ab", 500) + `"},"finish_reason" : "stop"}]}`, "stop"},
		{"a name inside the text", FormatOpenAIJSON,
			`{"choices":[{"index":0,"message":{"content":"` + strings.Repeat("ab", 500) + ` \"finish_reason\":\"length\" \\"},"finish_reason":null}]}`, ""},
		{"anthropic", FormatAnthropicJSON,
			`{"content":[{"type":"text","text":"` + strings.Repeat("v", 300) + `"}],"stop_reason":"max_tokens","stop_sequence":null}`, "max_tokens"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := NewExtractor(c.f, Options{})
			e.BodyTail([]byte(c.body[len(c.body)-120:]))
			if got := e.Result().FinishReason; got != c.want {
				t.Fatalf("finish reason %q, want %q", got, c.want)
			}
		})
	}
}
