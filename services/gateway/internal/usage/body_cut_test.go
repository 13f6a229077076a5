package usage

import "testing"

// TestBodyCut: the text of a reply cut mid-body is read as far as it came,
// in each format's text members, and nothing of the rest.
func TestBodyCut(t *testing.T) {
	for _, tc := range []struct {
		name, format, head, want string
	}{
		{"OpenAI chat", "/v1/chat/completions", `{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello hello hello`, "hello hello hello"},
		{"two choices, the first whole", "/v1/chat/completions", `{"choices":[{"message":{"content":"one. "}},{"message":{"content":"two`, "one. two"},
		{"cut in an escape", "/v1/chat/completions", `{"choices":[{"message":{"content":"a\"b\u00e`, `a"b`},
		{"cut after a backslash", "/v1/chat/completions", `{"choices":[{"message":{"content":"a\`, "a"},
		{"cut in a UTF-8 sequence", "/v1/chat/completions", "{\"choices\":[{\"message\":{\"content\":\"caf\xc3", "caf"},
		{"completions", "/v1/completions", `{"choices":[{"text":"once upon`, "once upon"},
		{"Ollama", "/api/generate", `{"model":"m","response":"the answer is`, "the answer is"},
		{"TGI", "/generate", `{"generated_text":"forty`, "forty"},
		{"Anthropic", "/v1/messages", `{"content":[{"type":"text","text":"bonjour`, "bonjour"},
		{"tool call", "/v1/chat/completions", `{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1`, `{"a":1`},
		{"other members ignored", "/v1/chat/completions", `{"id":"content","model":"text","choices":[{"message":{"role":"assistant"`, ""},
		{"cut in a key", "/v1/chat/completions", `{"choices":[{"message":{"conte`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex := NewExtractor(DetectFormat(tc.format, "application/json"), Options{})
			ex.BodyCut([]byte(tc.head))
			if got := ex.Result().Text; got != tc.want {
				t.Fatalf("text %q, want %q", got, tc.want)
			}
		})
	}
}
