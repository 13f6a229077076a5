package main

import (
	"encoding/json"
	"strings"
	"testing"
)

const chatBody = `{"model":"m1","messages":[{"role":"system","content":"be brief"},` +
	`{"role":"user","content":[{"type":"text","text":"hello there world"}]}]%s}`

func chatReq(extra string) string { return strings.Replace(chatBody, "%s", extra, 1) }

func TestChatNonStream(t *testing.T) {
	_, ts := newTestServer(t, func(o *options) { o.Name = "b1" })
	tests := []struct {
		name, extra, hdr string
		content, finish  string
		completion       float64
		usage            bool
	}{
		{name: "default", content: "tok0 tok1 tok2 ", finish: "stop", completion: 3, usage: true},
		{name: "max_tokens caps", extra: `,"max_tokens":2`, content: "tok0 tok1 ", finish: "length", completion: 2, usage: true},
		{name: "max_completion_tokens caps", extra: `,"max_completion_tokens":1`, content: "tok0 ", finish: "length", completion: 1, usage: true},
		{name: "omit usage", hdr: "true", content: "tok0 tok1 tok2 ", finish: "stop", usage: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.hdr != "" {
				hdr = []string{"X-Mock-Omit-Usage", tc.hdr}
			}
			resp := post(t, ts, "/v1/chat/completions", chatReq(tc.extra), hdr...)
			if resp.StatusCode != 200 || resp.Header.Get("X-Mock-Backend") != "b1" {
				t.Fatalf("status %d backend %q", resp.StatusCode, resp.Header.Get("X-Mock-Backend"))
			}
			m := decode(t, readAll(t, resp))
			if m["object"] != "chat.completion" || m["model"] != "m1" || !strings.HasPrefix(m["id"].(string), "chatcmpl-") {
				t.Fatalf("bad envelope: %v", m)
			}
			ch := m["choices"].([]any)[0].(map[string]any)
			msg := ch["message"].(map[string]any)
			if msg["role"] != "assistant" || msg["content"] != tc.content || ch["finish_reason"] != tc.finish {
				t.Fatalf("bad choice: %v", ch)
			}
			u, ok := m["usage"].(map[string]any)
			if ok != tc.usage {
				t.Fatalf("usage present = %v, want %v", ok, tc.usage)
			}
			if !tc.usage {
				return
			}
			// 2 messages * 3 overhead + 2 + 3 words.
			if u["prompt_tokens"] != 11.0 || u["completion_tokens"] != tc.completion || u["total_tokens"] != 11+tc.completion {
				t.Fatalf("usage = %v", u)
			}
		})
	}
}

func TestChatStream(t *testing.T) {
	_, ts := newTestServer(t, nil)
	tests := []struct {
		name, extra string
		hdr         []string
		usageChunk  bool
	}{
		{name: "no stream_options"},
		{name: "include_usage false", extra: `,"stream_options":{"include_usage":false}`},
		{name: "include_usage true", extra: `,"stream_options":{"include_usage":true}`, usageChunk: true},
		{name: "include_usage with omit-usage", extra: `,"stream_options":{"include_usage":true}`,
			hdr: []string{"X-Mock-Omit-Usage", "1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, ts, "/v1/chat/completions", chatReq(`,"stream":true`+tc.extra), tc.hdr...)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Fatalf("content type %q", ct)
			}
			evs := parseSSE(t, readAll(t, resp))
			want := 1 + 3 + 1 + 1 // role, tokens, finish, [DONE]
			if tc.usageChunk {
				want++
			}
			if len(evs) != want {
				t.Fatalf("got %d events, want %d: %v", len(evs), want, evs)
			}
			if evs[len(evs)-1].data != "[DONE]" {
				t.Fatalf("last event %q", evs[len(evs)-1].data)
			}
			var prev int64
			var text strings.Builder
			for i, ev := range evs[:len(evs)-1] {
				m := decode(t, []byte(ev.data))
				prev = checkSentNS(t, m, prev)
				if m["object"] != "chat.completion.chunk" || m["model"] != "m1" {
					t.Fatalf("event %d envelope: %v", i, m)
				}
				u, hasUsage := m["usage"]
				choices := m["choices"].([]any)
				if tc.usageChunk && i == len(evs)-2 {
					um := u.(map[string]any)
					if len(choices) != 0 || um["prompt_tokens"] != 11.0 || um["completion_tokens"] != 3.0 || um["total_tokens"] != 14.0 {
						t.Fatalf("usage chunk: %v", m)
					}
					continue
				}
				if hasUsage != tc.usageChunk || (hasUsage && u != nil) {
					t.Fatalf("event %d usage = %v (present %v)", i, u, hasUsage)
				}
				ch := choices[0].(map[string]any)
				d := ch["delta"].(map[string]any)
				switch {
				case i == 0:
					if d["role"] != "assistant" || ch["finish_reason"] != nil {
						t.Fatalf("role chunk: %v", ch)
					}
				case ch["finish_reason"] != nil:
					if ch["finish_reason"] != "stop" || len(d) != 0 {
						t.Fatalf("final chunk: %v", ch)
					}
				default:
					text.WriteString(d["content"].(string))
				}
			}
			if text.String() != "tok0 tok1 tok2 " {
				t.Fatalf("text %q", text.String())
			}
		})
	}
}

func TestCompletions(t *testing.T) {
	_, ts := newTestServer(t, nil)
	t.Run("non-stream", func(t *testing.T) {
		m := decode(t, readAll(t, post(t, ts, "/v1/completions", `{"prompt":"one two three four","max_tokens":2}`)))
		ch := m["choices"].([]any)[0].(map[string]any)
		u := m["usage"].(map[string]any)
		if m["object"] != "text_completion" || m["model"] != "mock-model" || ch["text"] != "tok0 tok1 " ||
			ch["finish_reason"] != "length" || u["prompt_tokens"] != 4.0 || u["total_tokens"] != 6.0 {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("token ids prompt", func(t *testing.T) {
		m := decode(t, readAll(t, post(t, ts, "/v1/completions", `{"prompt":[1,2,3,4,5]}`)))
		if u := m["usage"].(map[string]any); u["prompt_tokens"] != 5.0 {
			t.Fatalf("usage %v", u)
		}
	})
	t.Run("stream with usage", func(t *testing.T) {
		evs := parseSSE(t, readAll(t, post(t, ts, "/v1/completions",
			`{"prompt":"a b","stream":true,"stream_options":{"include_usage":true}}`)))
		if len(evs) != 3+1+1+1 { // tokens, finish, usage, [DONE]
			t.Fatalf("events %v", evs)
		}
		first := decode(t, []byte(evs[0].data))
		if ch := first["choices"].([]any)[0].(map[string]any); ch["text"] != "tok0 " {
			t.Fatalf("first chunk %v", first)
		}
		u := decode(t, []byte(evs[4].data))["usage"].(map[string]any)
		if u["prompt_tokens"] != 2.0 || u["completion_tokens"] != 3.0 {
			t.Fatalf("usage %v", u)
		}
	})
}

func TestEmbeddingsAndModels(t *testing.T) {
	_, ts := newTestServer(t, func(o *options) { o.Model = "served" })
	b1 := readAll(t, post(t, ts, "/v1/embeddings", `{"model":"e","input":["a b","c"]}`))
	b2 := readAll(t, post(t, ts, "/v1/embeddings", `{"model":"e","input":["a b","c"]}`))
	if string(b1) != string(b2) {
		t.Fatalf("embeddings are not deterministic")
	}
	var r struct {
		Object string
		Model  string
		Data   []struct {
			Object    string
			Index     int
			Embedding []float64
		}
		Usage map[string]int
	}
	if err := json.Unmarshal(b1, &r); err != nil {
		t.Fatal(err)
	}
	if r.Object != "list" || r.Model != "e" || len(r.Data) != 2 || r.Data[1].Index != 1 ||
		len(r.Data[0].Embedding) != embeddingDims || r.Usage["prompt_tokens"] != 3 || r.Usage["total_tokens"] != 3 {
		t.Fatalf("embeddings %s", b1)
	}
	resp, err := ts.Client().Get(ts.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := decode(t, readAll(t, resp))
	if m["object"] != "list" || m["data"].([]any)[0].(map[string]any)["id"] != "served" {
		t.Fatalf("models %v", m)
	}
}
