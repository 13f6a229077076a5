package main

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"testing"
)

func TestTGIGenerate(t *testing.T) {
	_, ts := newTestServer(t, nil)
	tests := []struct {
		name, body string
		details    bool
		prefill    int
		finish     string
		tokens     int
	}{
		{name: "plain", body: `{"inputs":"a b c"}`, tokens: 3},
		{name: "details", body: `{"inputs":"a b c","parameters":{"details":true}}`, details: true, finish: "eos_token", tokens: 3},
		{name: "details with prefill", body: `{"inputs":"a b c","parameters":{"details":true,"decoder_input_details":true,"max_new_tokens":2}}`,
			details: true, prefill: 3, finish: "length", tokens: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, ts, "/generate", tc.body)
			if p, g := resp.Header.Get("X-Prompt-Tokens"), resp.Header.Get("X-Generated-Tokens"); p != "3" || g != strconv.Itoa(tc.tokens) {
				t.Fatalf("x-prompt-tokens %q, x-generated-tokens %q, want 3 and %d", p, g, tc.tokens)
			}
			m := decode(t, readAll(t, resp))
			if m["generated_text"] != appendContentString(tc.tokens) {
				t.Fatalf("text %v", m["generated_text"])
			}
			d, ok := m["details"].(map[string]any)
			if ok != tc.details {
				t.Fatalf("details present %v: %v", ok, m)
			}
			if !ok {
				return
			}
			if d["finish_reason"] != tc.finish || d["generated_tokens"] != float64(tc.tokens) ||
				len(d["prefill"].([]any)) != tc.prefill || len(d["tokens"].([]any)) != tc.tokens {
				t.Fatalf("details %v", d)
			}
		})
	}
}

func appendContentString(n int) string { return string(appendContent(nil, n)) }

func TestTGIGenerateStream(t *testing.T) {
	_, ts := newTestServer(t, nil)
	raw := readAll(t, post(t, ts, "/generate_stream", `{"inputs":"a b c","parameters":{"details":true,"max_new_tokens":2}}`))
	if !bytes.HasPrefix(raw, []byte("data:{")) {
		t.Fatalf("TGI writes data: without a space: %q", raw[:20])
	}
	evs := parseSSE(t, raw)
	if len(evs) != 2 {
		t.Fatalf("events %v", evs)
	}
	var prev int64
	for i, ev := range evs {
		m := decode(t, []byte(ev.data))
		prev = checkSentNS(t, m, prev)
		tok := m["token"].(map[string]any)
		if m["index"] != float64(i+1) || tok["text"] != appendContentString(i + 1)[len(appendContentString(i)):] || tok["special"] != false {
			t.Fatalf("event %d: %v", i, m)
		}
		if i == 0 {
			if m["generated_text"] != nil || m["details"] != nil {
				t.Fatalf("first event must have null generated_text/details: %v", m)
			}
			continue
		}
		d := m["details"].(map[string]any)
		if m["generated_text"] != "tok0 tok1 " || d["finish_reason"] != "length" || d["generated_tokens"] != 2.0 || d["input_length"] != 3.0 {
			t.Fatalf("last event %v", m)
		}
	}
}

// TestTGIGenerateStreamWithoutDetails: as TGI, the last event has
// "details":null unless the request set parameters.details.
func TestTGIGenerateStreamWithoutDetails(t *testing.T) {
	_, ts := newTestServer(t, nil)
	evs := parseSSE(t, readAll(t, post(t, ts, "/generate_stream", `{"inputs":"a b c","parameters":{"max_new_tokens":2}}`)))
	last := decode(t, []byte(evs[len(evs)-1].data))
	if last["generated_text"] != "tok0 tok1 " || last["details"] != nil {
		t.Fatalf("last event %v, want the text and details null", last)
	}
}

func ndjson(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, decode(t, sc.Bytes()))
	}
	return out
}

func TestOllama(t *testing.T) {
	_, ts := newTestServer(t, nil)
	chat := `{"model":"llama3","messages":[{"role":"user","content":"why is the sky blue"}]%s}`
	t.Run("chat streams by default", func(t *testing.T) {
		resp := post(t, ts, "/api/chat", strings.Replace(chat, "%s", "", 1))
		if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
			t.Fatalf("content type %q", ct)
		}
		lines := ndjson(t, readAll(t, resp))
		if len(lines) != 4 {
			t.Fatalf("lines %v", lines)
		}
		var prev int64
		var text strings.Builder
		for i, l := range lines {
			prev = checkSentNS(t, l, prev)
			if l["model"] != "llama3" || l["created_at"] == nil {
				t.Fatalf("line %d: %v", i, l)
			}
			text.WriteString(l["message"].(map[string]any)["content"].(string))
			if done := l["done"].(bool); done != (i == 3) {
				t.Fatalf("line %d done=%v", i, done)
			}
		}
		last := lines[3]
		if text.String() != "tok0 tok1 tok2 " || last["done_reason"] != "stop" ||
			last["prompt_eval_count"] != 8.0 || last["eval_count"] != 3.0 || last["total_duration"] == nil || last["eval_duration"] == nil {
			t.Fatalf("final line %v (text %q)", last, text.String())
		}
	})
	t.Run("chat non-stream", func(t *testing.T) {
		m := decode(t, readAll(t, post(t, ts, "/api/chat", strings.Replace(chat, "%s", `,"stream":false,"options":{"num_predict":1}`, 1))))
		if m["done"] != true || m["done_reason"] != "length" || m["eval_count"] != 1.0 ||
			m["message"].(map[string]any)["content"] != "tok0 " {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("generate stream and omit usage", func(t *testing.T) {
		lines := ndjson(t, readAll(t, post(t, ts, "/api/generate", `{"prompt":"a b","system":"c"}`, "X-Mock-Omit-Usage", "true")))
		last := lines[len(lines)-1]
		if len(lines) != 4 || lines[0]["response"] != "tok0 " || last["done"] != true || last["model"] != "mock-model" {
			t.Fatalf("lines %v", lines)
		}
		if _, ok := last["eval_count"]; ok {
			t.Fatalf("eval_count present with omit-usage: %v", last)
		}
	})
	t.Run("generate non-stream", func(t *testing.T) {
		m := decode(t, readAll(t, post(t, ts, "/api/generate", `{"prompt":"a b","system":"c","stream":false}`)))
		if m["response"] != "tok0 tok1 tok2 " || m["prompt_eval_count"] != 3.0 || m["eval_count"] != 3.0 {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("embed and tags", func(t *testing.T) {
		m := decode(t, readAll(t, post(t, ts, "/api/embed", `{"model":"emb","input":["a b","c"]}`)))
		if len(m["embeddings"].([]any)) != 2 || m["prompt_eval_count"] != 3.0 || m["model"] != "emb" {
			t.Fatalf("embed %v", m)
		}
		resp, err := ts.Client().Get(ts.URL + "/api/tags")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		tags := decode(t, readAll(t, resp))
		if tags["models"].([]any)[0].(map[string]any)["name"] != "mock-model" {
			t.Fatalf("tags %v", tags)
		}
	})
}

func TestAnthropic(t *testing.T) {
	_, ts := newTestServer(t, nil)
	body := `{"model":"claude-x","max_tokens":%d,"system":"be nice","messages":[{"role":"user","content":"hi you"}]%s}`
	req := func(max int, extra string) string {
		return strings.Replace(strings.Replace(body, "%d", string(appendInt(nil, max)), 1), "%s", extra, 1)
	}
	t.Run("non-stream", func(t *testing.T) {
		m := decode(t, readAll(t, post(t, ts, "/v1/messages", req(100, ""))))
		u := m["usage"].(map[string]any)
		c := m["content"].([]any)[0].(map[string]any)
		// system + 1 message: 2*3 overhead + 2 + 2 words.
		if m["type"] != "message" || m["role"] != "assistant" || m["model"] != "claude-x" || m["stop_reason"] != "end_turn" ||
			c["type"] != "text" || c["text"] != "tok0 tok1 tok2 " || u["input_tokens"] != 10.0 || u["output_tokens"] != 3.0 {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("stream", func(t *testing.T) {
		evs := parseSSE(t, readAll(t, post(t, ts, "/v1/messages", req(2, `,"stream":true`))))
		want := []string{"message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
			"content_block_stop", "message_delta", "message_stop"}
		if len(evs) != len(want) {
			t.Fatalf("events %v", evs)
		}
		var prev int64
		for i, ev := range evs {
			m := decode(t, []byte(ev.data))
			prev = checkSentNS(t, m, prev)
			if ev.name != want[i] || m["type"] != want[i] {
				t.Fatalf("event %d = %q/%v, want %q", i, ev.name, m["type"], want[i])
			}
			switch ev.name {
			case "message_start":
				u := m["message"].(map[string]any)["usage"].(map[string]any)
				if u["input_tokens"] != 10.0 {
					t.Fatalf("message_start %v", m)
				}
			case "content_block_delta":
				d := m["delta"].(map[string]any)
				if d["type"] != "text_delta" || d["text"] != []string{"tok0 ", "tok1 "}[i-3] {
					t.Fatalf("delta %v", m)
				}
			case "message_delta":
				if m["delta"].(map[string]any)["stop_reason"] != "max_tokens" || m["usage"].(map[string]any)["output_tokens"] != 2.0 {
					t.Fatalf("message_delta %v", m)
				}
			}
		}
	})
}
