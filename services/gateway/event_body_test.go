package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
	"github.com/llmproxy/llmproxy/pkg/keys"
)

// TestEventCarriesTheClientsBody: the backend is asked for a usage chunk
// the client did not request, but the event's request_body is the body the
// client sent, without the stream_options the gateway added.
func TestEventCarriesTheClientsBody(t *testing.T) {
	var sent []byte
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"+
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\ndata: [DONE]\n\n")
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	body := `{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !bytes.Contains(sent, []byte(`"include_usage":true`)) {
		t.Fatalf("the backend was not asked for usage: %s", sent)
	}
	ev := s.next(t)
	if string(ev.RequestBody) != body {
		t.Fatalf("event request_body %s, want the client's %s", ev.RequestBody, body)
	}
	if ev.Usage.TotalTokens != 5 {
		t.Fatalf("usage %+v", ev.Usage)
	}
}

// TestBodyKeyIsScrubbed: a client that sends its key in the body as well
// (here as an "api_key" member and inside a message) has it replaced
// before the body reaches the backend or the event; a key escaped by the
// client's JSON encoder is found too, and the rest of the body is as sent.
func TestBodyKeyIsScrubbed(t *testing.T) {
	var sent []byte
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[{"index":0,"message":{"role":"assistant","content":"a"}}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	body := `{"model":"m1","api_key":"` + testKey + `","messages":[{"role":"user","content":"my key is ` + testKey + `!"}]}`
	want := `{"model":"m1","api_key":"[REDACTED]","messages":[{"role":"user","content":"my key is [REDACTED]!"}]}`
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", body, withKey()); resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if string(sent) != want {
		t.Errorf("the backend got %s, want %s", sent, want)
	}
	if ev := s.next(t); string(ev.RequestBody) != want {
		t.Errorf("event request_body %s, want %s", ev.RequestBody, want)
	}
	// The key sent as the model: the event's model (and so the access
	// line's and webhooks') is not the key either.
	resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"`+testKey+`"}`, withKey())
	if ev := s.next(t); ev.Model == testKey || strings.Contains(string(b), testKey) {
		t.Errorf("a key sent as the model: event model %q, reply %d %s", ev.Model, resp.StatusCode, b)
	}
	// In a model too long to take, refused with what the event keeps of
	// it: the whole model is scrubbed before it is cut (a cut through the
	// key would keep part of it), and measured as the client sent it.
	for _, model := range []string{testKey + strings.Repeat("a", 600), strings.Repeat("a", 500) + testKey} {
		resp, b = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"`+model+`"}`, withKey())
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "invalid_model") || strings.Contains(string(b), testKey[:20]) {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		if ev := s.next(t); strings.Contains(ev.Model, testKey[:20]) {
			t.Errorf("a model of %d bytes holding the key: event model %.60q…", len(model), ev.Model)
		}
	}
}

// TestKeyRefusedAfterOnAuthIsScrubbed: with an on_auth hook the body is
// read before the key is checked; a key refused then (disabled, expired,
// from an address it may not be used from) records no key sent as the
// model.
func TestKeyRefusedAfterOnAuthIsScrubbed(t *testing.T) {
	script := filepath.Join(t.TempDir(), "a.lua")
	if err := os.WriteFile(script, []byte("function on_auth(req) return nil end\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, status: disabled}]\nlua: {scripts: [%q]}\n", okBackend(t), testKey, script))
	resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"`+testKey+`"}`, withKey())
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if ev := s.next(t); strings.Contains(ev.Model, testKey) {
		t.Errorf("event model is the client's key: %q", ev.Model)
	}
}

func TestScrubBodySecret(t *testing.T) {
	tests := []struct{ name, body, secret, want string }{
		{"absent", `{"a":"b"}`, "sk-12345678", `{"a":"b"}`},
		{"escaped by the encoder", `{"k":"sk-a<b\"c12345"}`, `sk-a<b"c12345`, `{"k":"[REDACTED]"}`},
		{"html-escaped", `{"k":"sk-a\u003cbc12345"}`, `sk-a<bc12345`, `{"k":"[REDACTED]"}`},
		{"short keys are not looked for", `{"k":"abc"}`, "abc", `{"k":"abc"}`},
		{"a key of digits that matches a number", `{"max_tokens":12345678}`, "12345678", `{"max_tokens":12345678}`},
		{"no key", `{"k":"x"}`, "", `{"k":"x"}`},
		// Escapes JSON allows and encoders do not write: the key as JSON
		// reads it.
		{"a letter \\u-escaped", `{"k":"\u0073k-12345678 and sk-12345678","n":[1]}`, "sk-12345678", `{"k":"[REDACTED] and [REDACTED]","n":[1]}`},
		{"a digit \\u-escaped, upper-case hex", `{"k":"a\nsk-1234567\u0038"}`, "sk-12345678", `{"k":"a\n[REDACTED]"}`},
		{"every character escaped, in a name", `{"\u0073\u006b\u002d\u0031\u0032\u0033\u0034\u0035":1}`, "sk-12345", `{"[REDACTED]":1}`},
		{"a slash escaped", `{"k":"sk-esc<>&\/\"q-123456"}`, `sk-esc<>&/"q-123456`, `{"k":"[REDACTED]"}`},
		{"a non-ASCII key escaped", `{"k":"sk-cl\u00e9-123456"}`, "sk-clé-123456", `{"k":"[REDACTED]"}`},
		{"an escaped backslash is no escape", `{"k":"\\u0073k-12345678"}`, "sk-12345678", `{"k":"\\u0073k-12345678"}`},
		{"other escapes kept as written", `{"a":"caf\u00e9 \/","k":"\u0073k-12345678"}`, "sk-12345678", `{"a":"caf\u00e9 \/","k":"[REDACTED]"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(scrubBodySecret([]byte(tt.body), tt.secret)); got != tt.want {
				t.Errorf("scrubBodySecret(%s, %q) = %s, want %s", tt.body, tt.secret, got, tt.want)
			}
		})
	}
}

// TestRequestIDHoldingTheKeyIsNotKept: a client that sends its key as its
// X-Request-Id (a misplaced header) does not have it passed to the backend
// or recorded as client_request_id; the request goes on under the
// gateway's id.
func TestRequestIDHoldingTheKeyIsNotKept(t *testing.T) {
	var sentID string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sentID = r.Header.Get("X-Request-Id")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[{"index":0,"message":{"role":"assistant","content":"a"}}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	hdr := withKey()
	hdr["X-Request-Id"] = "id-" + testKey
	resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, hdr)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	gwID := resp.Header.Get("X-Llmproxy-Request-Id")
	if got := resp.Header.Get("X-Request-Id"); got != gwID || sentID != gwID {
		t.Errorf("X-Request-Id to the client %q, to the backend %q; want the gateway's %q", got, sentID, gwID)
	}
	if ev := s.next(t); ev.ClientRequestID != "" {
		t.Errorf("client_request_id %q recorded", ev.ClientRequestID)
	}
}

// FuzzScrubBodySecret: a JSON body stays JSON, whatever key is scrubbed
// out of it.
func FuzzScrubBodySecret(f *testing.F) {
	f.Add(`{"api_key":"sk-llmproxy-0123456789","m":[{"c":"key sk-llmproxy-0123456789"}]}`, "sk-llmproxy-0123456789")
	f.Add(`{"k":"sk-a<b\"c12345","n":12345678}`, `sk-a<b"c12345`)
	f.Add(`{"max_tokens":12345678}`, "12345678")
	f.Add(`{"\u0073k-1234567\u0038":"sk-esc\/12345678"}`, "sk-12345678")
	f.Add(`{"k":"sk-esc\/12345678"}`, "sk-esc/12345678")
	f.Fuzz(func(t *testing.T, body, secret string) {
		if !jsonscan.Valid([]byte(body)) {
			return
		}
		out := scrubBodySecret([]byte(body), secret)
		if !jsonscan.Valid(out) {
			t.Fatalf("scrubBodySecret(%q, %q) = %q, not JSON", body, secret, out)
		}
		if len(secret) < minScrubbedSecret {
			return
		}
		// No string holds the key as JSON reads it, however it was
		// written.
		dec := json.NewDecoder(bytes.NewReader(out))
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			if s, ok := tok.(string); ok && strings.Contains(s, secret) {
				t.Fatalf("scrubBodySecret(%q, %q) = %q: %q holds the key", body, secret, out, s)
			}
		}
	})
}

// TestWithoutKeysOneStartingWithTheOther: of the two keys a client sent
// (bearer, and another in x-api-key), one may start with the other; no
// tail of the longer is left.
func TestWithoutKeysOneStartingWithTheOther(t *testing.T) {
	for _, x := range []*exchange{
		{secret: "sk-llmproxy-aaaaaaaaaaaa", otherSecret: "sk-llmproxy-aaaaaaaaaaaaTAIL99"},
		{secret: "sk-llmproxy-aaaaaaaaaaaaTAIL99", otherSecret: "sk-llmproxy-aaaaaaaaaaaa"},
	} {
		got := x.withoutKeys("keys sk-llmproxy-aaaaaaaaaaaaTAIL99 and sk-llmproxy-aaaaaaaaaaaa")
		if strings.Contains(got, "TAIL99") || strings.Contains(got, "aaaa") {
			t.Errorf("withoutKeys = %q", got)
		}
	}
}

// TestKeysOutOfPlaceAreNotRecorded: the request's key a backend writes
// back, as written or in JSON's escapes, is not captured; a key made by
// `llmproxy keys` sent as the model or as X-Request-Id (a client that put
// it in the wrong field, with none or another key in its header), or the
// request's key percent-encoded in X-Request-Id, is recorded nowhere and
// not sent on.
func TestKeysOutOfPlaceAreNotRecorded(t *testing.T) {
	escaped := strings.ReplaceAll(testKey, "-", `\u002d`)
	got := make(chan http.Header, 4)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"your key is `+testKey+` or `+escaped+`"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`)
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "logging: {capture_response: true}\n")

	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[]}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	<-got
	if ev := s.next(t); ev.Response == nil || strings.Contains(ev.Response.Content, testKey) || strings.Contains(ev.Response.Content, escaped) {
		t.Fatalf("captured %+v: the request's key written back is published", ev.Response)
	}

	const made = keys.SecretPrefix + "Zq8RkT2vLm9XwY4bN7cH"
	for _, c := range []struct {
		name, body string
		hdr        map[string]string
	}{
		{"a made key as the model, no key", `{"model":"` + made + `","messages":[]}`, map[string]string{}},
		{"a made key as the model, another key", `{"model":"` + made + `","messages":[]}`, map[string]string{"Authorization": "Bearer sk-llmproxy-wrong-0000000000"}},
		{"a made key as X-Request-Id", `{"model":"m1","messages":[]}`, map[string]string{"X-Request-Id": made}},
		{"the request's key percent-encoded as X-Request-Id", `{"model":"m1","messages":[]}`,
			map[string]string{"Authorization": "Bearer " + testKey, "X-Request-Id": strings.ReplaceAll(testKey, "-", "%2D")}},
	} {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", c.body, c.hdr)
		ev := s.next(t)
		if strings.Contains(ev.Model+ev.ClientRequestID, made) || strings.Contains(ev.ClientRequestID, "%2D") {
			t.Errorf("%s: event model %q client_request_id %q", c.name, ev.Model, ev.ClientRequestID)
		}
		if resp.StatusCode == 200 {
			if h := <-got; strings.Contains(h.Get("X-Request-Id"), made) || strings.Contains(h.Get("X-Request-Id"), "%2D") {
				t.Errorf("%s: the backend got X-Request-Id %q", c.name, h.Get("X-Request-Id"))
			}
		} else if strings.Contains(string(body), made) {
			t.Errorf("%s: the refusal quotes the key: %s", c.name, body)
		}
	}
}
