package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

type tokens struct{ prompt, completion int64 }

// chatBody is a chat request with a prompt of i+2 words.
func chatBody(i int, stream, includeUsage bool) []byte {
	words := strings.Repeat("word ", i%7+1)
	m := map[string]any{
		"model":    "mock-model",
		"messages": []map[string]string{{"role": "user", "content": "hello " + words}},
	}
	if stream {
		m["stream"] = true
		if includeUsage {
			m["stream_options"] = map[string]any{"include_usage": true}
		}
	}
	b, _ := json.Marshal(m)
	return b
}

func post(t testing.TB, url, key, requestID string, body []byte, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if requestID != "" {
		req.Header.Set("X-Request-Id", requestID)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, b
}

// usageFromSSE returns the usage chunk of a stream, if it has one, and how
// many usage chunks it had.
func usageFromSSE(t testing.TB, body []byte) (tokens, int) {
	var u tokens
	n := 0
	for _, ev := range sseEvents(body) {
		data := strings.TrimPrefix(strings.TrimSpace(ev), "data: ")
		if !strings.Contains(data, `"usage":{`) {
			continue
		}
		var c struct {
			Usage *struct {
				Prompt     int64 `json:"prompt_tokens"`
				Completion int64 `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("bad chunk %q: %v", data, err)
		}
		if c.Usage != nil {
			u = tokens{c.Usage.Prompt, c.Usage.Completion}
			n++
		}
	}
	return u, n
}

func usageFromJSON(t testing.TB, body []byte) tokens {
	var r struct {
		Usage struct {
			Prompt     int64 `json:"prompt_tokens"`
			Completion int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("bad body %q: %v", body, err)
	}
	return tokens{r.Usage.Prompt, r.Usage.Completion}
}

// mixedLoad sends n requests through the gateway — non-stream, stream with
// usage asked, stream without — and returns the tokens they must be billed
// and their request ids. For streams whose client did not ask for usage, the
// expected count comes from the same request sent straight to mockllm with
// usage asked.
func mixedLoad(t testing.TB, gateway, mock, key, idPrefix string, n int) (tokens, []string) {
	t.Helper()
	var sum tokens
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%d", idPrefix, i)
		ids = append(ids, id)
		var got tokens
		switch i % 3 {
		case 0:
			resp, body := post(t, gateway+"/v1/chat/completions", key, id, chatBody(i, false, false), nil)
			if resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
			}
			got = usageFromJSON(t, body)
		case 1:
			resp, body := post(t, gateway+"/v1/chat/completions", key, id, chatBody(i, true, true), nil)
			if resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
			}
			u, count := usageFromSSE(t, body)
			if count != 1 {
				t.Fatalf("request %d asked for usage and saw %d usage chunks", i, count)
			}
			got = u
		case 2:
			resp, body := post(t, gateway+"/v1/chat/completions", key, id, chatBody(i, true, false), nil)
			if resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
			}
			if _, count := usageFromSSE(t, body); count != 0 {
				t.Fatalf("request %d did not ask for usage but saw %d usage chunks", i, count)
			}
			_, direct := post(t, mock+"/v1/chat/completions", "", "", chatBody(i, true, true), nil)
			got, _ = usageFromSSE(t, direct)
		}
		if got.prompt == 0 || got.completion == 0 {
			t.Fatalf("request %d: no usage seen (%+v)", i, got)
		}
		sum.prompt += got.prompt
		sum.completion += got.completion
	}
	return sum, ids
}

// upstreamWebhookFields are the fields of the upstream webhook body and the
// JSON types they must have.
var upstreamWebhookFields = map[string]string{
	"request_id": "string", "user_id": "string", "api_key": "string", "request_body": "object",
	"usage": "object", "is_stream": "bool", "endpoint": "string", "timestamp": "string",
	"backend_url": "string", "latency_ms": "number", "status_code": "number",
}

func checkWebhookPayload(t testing.TB, id string, p map[string]any, secrets ...string) {
	t.Helper()
	for f, typ := range upstreamWebhookFields {
		v, ok := p[f]
		if !ok {
			t.Fatalf("payload %s lacks %q: %v", id, f, p)
		}
		okType := false
		switch typ {
		case "string":
			_, okType = v.(string)
		case "object":
			_, okType = v.(map[string]any)
		case "bool":
			_, okType = v.(bool)
		case "number":
			_, okType = v.(float64)
		}
		if !okType {
			t.Fatalf("payload %s: %q is %T, want %s", id, f, v, typ)
		}
	}
	u := p["usage"].(map[string]any)
	for _, f := range []string{"prompt_tokens", "completion_tokens", "total_tokens"} {
		if _, ok := u[f].(float64); !ok {
			t.Fatalf("payload %s: usage.%s missing", id, f)
		}
	}
	k := p["api_key"].(string)
	if !strings.Contains(k, "…") {
		t.Fatalf("payload %s: api_key %q is not masked", id, k)
	}
	body, _ := json.Marshal(p)
	for _, s := range secrets {
		if strings.Contains(string(body), s) {
			t.Fatalf("payload %s carries a secret in the clear: %s", id, body)
		}
	}
}
