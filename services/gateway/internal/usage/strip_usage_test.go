package usage

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestStripUsage(t *testing.T) {
	cases := map[string]string{
		`data: {"id":"a","choices":[],"usage":null}` + "\n\n":                                           `data: {"id":"a","choices":[]}` + "\n\n",
		`data: {"usage":null,"id":"a"}` + "\n\n":                                                        `data: {"id":"a"}` + "\n\n",
		`data: {"id":"a", "usage":null, "x":1}` + "\n\n":                                                `data: {"id":"a", "x":1}` + "\n\n",
		`data: {"id":"a","usage":{"prompt_tokens":1}}` + "\n\n":                                         `data: {"id":"a","usage":{"prompt_tokens":1}}` + "\n\n",
		`data: {"id":"a","choices":[{"delta":{"content":"x"}}],"usage":null,"mock_sent_ns":1}` + "\n\n": `data: {"id":"a","choices":[{"delta":{"content":"x"}}],"mock_sent_ns":1}` + "\n\n",
		// Python's json.dumps separators.
		`data: {"id": "c1", "choices": [], "usage": null}` + "\n\n": `data: {"id": "c1", "choices": []}` + "\n\n",
		`data: {"usage" : null, "id": "c1"}` + "\n\n":               `data: {"id": "c1"}` + "\n\n",
		// Not the member: a string value "usage", a name with an
		// escaped quote before usage, a usage that is not null.
		`data: {"x":"usage","usage": null}` + "\n\n": `data: {"x":"usage"}` + "\n\n",
		`data: {"a\"usage": null}` + "\n\n":          `data: {"a\"usage": null}` + "\n\n",
		`data: {"usage": nullx}` + "\n\n":            `data: {"usage": nullx}` + "\n\n",
		// A usage object on a chunk with choices: vLLM's continuous
		// usage, or an engine's usage on its finish chunk.
		`data: {"id":"a","choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":245,"total_tokens":246,"completion_tokens":1}}` + "\n\n":    `data: {"id":"a","choices":[{"delta":{"content":"x"}}]}` + "\n\n",
		`data: {"choices":[{"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":1}},"x":1}` + "\n\n": `data: {"choices":[{"finish_reason":"tool_calls"}],"x":1}` + "\n\n",
		// Over several data lines (valid SSE; JSON whitespace between
		// them), and with other fields.
		"data: {\"id\":\"a\",\"choices\":[],\ndata: \"usage\":null}\n\n": "data: {\"id\":\"a\",\"choices\":[]}\n\n",
		"event: x\r\ndata: {\"usage\":null\r\ndata: ,\"a\":1}\r\n\r\n":   "event: x\r\ndata: {\"a\":1}\r\n\r\n",
		"data: {\"id\":\"a\",\"usage\":null\ndata: }\n\n":                "data: {\"id\":\"a\"\ndata: }\n\n",
		// CRLF with the last LF cut off by a read: it follows as a
		// piece of its own, so the event keeps its lone CR.
		"data: {\"id\":\"a\",\r\ndata: \"usage\":null}\r\n\r": "data: {\"id\":\"a\"}\r\n\r",
		// A usage inside a choice is the choice's own.
		`data: {"choices":[{"delta":{"usage":null}}],"usage":null}` + "\n\n": `data: {"choices":[{"delta":{"usage":null}}]}` + "\n\n",
		`data: {"choices":[{"delta":{"usage":null}}]}` + "\n\n":              `data: {"choices":[{"delta":{"usage":null}}]}` + "\n\n",
		// Not JSON: untouched.
		`data: {"usage":null,` + "\n\n": `data: {"usage":null,` + "\n\n",
	}
	for in, want := range cases {
		got := string(StripUsage([]byte(in)))
		if got != want {
			t.Errorf("StripUsage(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzStripUsage(f *testing.F) {
	f.Add([]byte(`{"a":1,"usage":null}`))
	f.Add([]byte(`{"usage":null}`))
	f.Add([]byte(`{"id": "a", "usage" :  null}`))
	f.Add([]byte(`{"a\\\"usage": null, "usage": null}`))
	f.Add([]byte("{\"a\":1,\n\"usage\":null}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if bytes.ContainsAny(b, "\r") {
			return
		}
		// Every line of b a data line of its own.
		in := append(append([]byte("data: "), bytes.ReplaceAll(b, []byte("\n"), []byte("\ndata: "))...), "\n\n"...)
		out := StripUsage(append([]byte(nil), in...))
		var m map[string]any
		if !json.Valid(b) || json.Unmarshal(b, &m) != nil {
			return
		}
		data, _, ok := sseData(out, nil)
		var got map[string]any
		if !ok || json.Unmarshal(data, &got) != nil {
			t.Fatalf("valid object %q became %q, whose data is not one", in, out)
		}
		if u, ok := m["usage"]; ok && u == nil {
			if _, still := got["usage"]; still {
				t.Fatalf("%q: usage null kept in %q", in, out)
			}
		}
		for k := range m {
			if _, kept := got[k]; !kept && k != "usage" {
				t.Fatalf("%q: member %q lost in %q", in, k, out)
			}
		}
	})
}
