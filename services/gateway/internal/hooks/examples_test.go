package hooks

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

const examplesDir = "../../../../examples/lua"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func loadExample(t *testing.T, names ...string) *Engine {
	t.Helper()
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = filepath.Join(examplesDir, n)
	}
	e, err := Load(paths, Options{Logger: quietLogger(), Timeout: testTimeout})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return e
}

func jsonEqual(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("result is not JSON: %v: %s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("body = %s, want %s", got, want)
	}
}

func TestExamplesLoadTogether(t *testing.T) {
	e := loadExample(t, "model_alias.lua", "tenant_auth.lua", "route_by_header.lua", "redact.lua")
	for _, h := range []string{HookAuth, HookRequest, HookRoute, HookComplete} {
		if !e.Has(h) {
			t.Errorf("Has(%s) = false", h)
		}
	}
	if e.Has(HookResponse) || e.Has("on_nothing") {
		t.Error("Has reports a hook no script defines")
	}
}

func TestModelAlias(t *testing.T) {
	e := loadExample(t, "model_alias.lua")
	tests := []struct {
		name      string
		body      string
		want      string
		unchanged bool
		alias     string
		path      string
	}{
		{name: "alias and default max_tokens", body: `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
			want: `{"model":"qwen2.5-72b","max_tokens":512,"messages":[{"role":"user","content":"hi"}]}`, alias: "gpt-4o"},
		{name: "alias keeps max_tokens", body: `{"model":"gpt-4o","max_tokens":64}`,
			want: `{"model":"qwen2.5-72b","max_tokens":64}`, alias: "gpt-4o"},
		{name: "unknown model gets default only", body: `{"model":"llama3","stream":true}`,
			want: `{"model":"llama3","stream":true,"max_tokens":512}`},
		{name: "nothing to do leaves bytes untouched", body: `{"model": "llama3",  "max_tokens": 10}`,
			want: `{"model":"llama3","max_tokens":10}`, unchanged: true},
		{name: "empty arrays and nulls survive", body: `{"model":"gpt-4o","tools":[],"stop":null,"max_tokens":1}`,
			want: `{"model":"qwen2.5-72b","tools":[],"stop":null,"max_tokens":1}`, alias: "gpt-4o"},
		{name: "completions get the default", path: "/v1/completions", body: `{"model":"llama3","prompt":"x"}`,
			want: `{"model":"llama3","prompt":"x","max_tokens":512}`},
		{name: "embeddings do not", path: "/v1/embeddings", body: `{"model":"llama3","input":"x"}`,
			want: `{"model":"llama3","input":"x"}`, unchanged: true},
		{name: "nor a model's details", path: "/api/show", body: `{"model":"gpt-4o"}`,
			want: `{"model":"qwen2.5-72b"}`, alias: "gpt-4o"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = "/v1/chat/completions"
			}
			r := &Request{Method: "POST", Path: path, Headers: http.Header{}, Body: []byte(tc.body)}
			rej, err := e.OnRequest(context.Background(), r)
			if err != nil || rej != nil {
				t.Fatalf("OnRequest = %v, %v", rej, err)
			}
			jsonEqual(t, r.Body, tc.want)
			if tc.unchanged && string(r.Body) != tc.body {
				t.Errorf("body re-encoded although unchanged: %s", r.Body)
			}
			if got := r.Headers.Get("X-Model-Alias"); got != tc.alias {
				t.Errorf("X-Model-Alias = %q, want %q", got, tc.alias)
			}
		})
	}
}

func sign(secret, msg string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

func TestTenantAuth(t *testing.T) {
	e := loadExample(t, "tenant_auth.lua")
	tests := []struct {
		name    string
		headers map[string]string
		want    *Identity
	}{
		{name: "no tenant header is no opinion", headers: nil, want: nil},
		{name: "good signature", headers: map[string]string{"X-Tenant": "acme", "X-Tenant-Signature": sign("acme-signing-secret", "acme")},
			want: &Identity{ID: "tenant:acme", Name: "acme", UserID: "acme-corp", Allowed: true,
				Limits: map[string]float64{"requests_per_minute": 600, "tokens_per_minute": 200000}}},
		{name: "bad signature", headers: map[string]string{"X-Tenant": "acme", "X-Tenant-Signature": sign("wrong", "acme")},
			want: &Identity{Allowed: false}},
		{name: "signature of another tenant", headers: map[string]string{"X-Tenant": "globex", "X-Tenant-Signature": sign("acme-signing-secret", "acme")},
			want: &Identity{Allowed: false}},
		{name: "missing signature", headers: map[string]string{"X-Tenant": "acme"}, want: &Identity{Allowed: false}},
		{name: "unknown tenant", headers: map[string]string{"X-Tenant": "nobody", "X-Tenant-Signature": "00"}, want: &Identity{Allowed: false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			got, err := e.OnAuth(context.Background(), &Request{Method: "POST", Path: "/v1/chat/completions", Headers: h})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("OnAuth = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRouteByHeader(t *testing.T) {
	e := loadExample(t, "route_by_header.lua")
	tests := []struct{ pool, want string }{
		{"gpu-a", "vllm-a100"},
		{"GPU-B", "vllm-h100"},
		{"cpu", "llamacpp-cpu"},
		{"tpu", ""},
		{"", ""},
	}
	for _, tc := range tests {
		t.Run("pool="+tc.pool, func(t *testing.T) {
			h := http.Header{}
			if tc.pool != "" {
				h.Set("X-Backend-Pool", tc.pool)
			}
			got, err := e.OnRoute(context.Background(), &Request{Headers: h})
			if err != nil || got != tc.want {
				t.Errorf("OnRoute = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	e := loadExample(t, "redact.lua")
	tests := []struct {
		name        string
		body        string
		content     *string
		wantBody    string
		wantContent string
		wantTags    map[string]string
	}{
		{
			name:        "email and key in messages",
			body:        `{"model":"m","messages":[{"role":"user","content":"mail jane.doe+x@example.co.uk key sk-abc123XYZ"}],"tools":[],"stop":null}`,
			content:     ptr("sure, write to bob@corp.io"),
			wantBody:    `{"model":"m","messages":[{"role":"user","content":"mail [email] key [secret]"}],"tools":[],"stop":null}`,
			wantContent: "sure, write to [email]",
			wantTags:    map[string]string{"env": "test", "redacted": "3"},
		},
		{
			name:        "clean event keeps its bytes",
			body:        `{"model": "m", "messages": []}`,
			content:     ptr("hello"),
			wantBody:    `{"model": "m", "messages": []}`,
			wantContent: "hello",
			wantTags:    map[string]string{"env": "test"},
		},
		{
			name:     "no captured response",
			body:     `{"prompt":"sk-live-0001"}`,
			wantBody: `{"prompt":"[secret]"}`,
			wantTags: map[string]string{"env": "test", "redacted": "1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := &events.RequestCompleted{RequestID: "r1", RequestBody: json.RawMessage(tc.body), Tags: map[string]string{"env": "test"}}
			if tc.content != nil {
				ev.Response = &events.CapturedResponse{Content: *tc.content}
			}
			if err := e.OnComplete(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			if tc.wantBody == tc.body {
				if string(ev.RequestBody) != tc.body {
					t.Errorf("request_body re-encoded: %s", ev.RequestBody)
				}
			} else {
				jsonEqual(t, ev.RequestBody, tc.wantBody)
			}
			if tc.content != nil && ev.Response.Content != tc.wantContent {
				t.Errorf("response content = %q, want %q", ev.Response.Content, tc.wantContent)
			}
			if !reflect.DeepEqual(ev.Tags, tc.wantTags) {
				t.Errorf("tags = %v, want %v", ev.Tags, tc.wantTags)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestRedactMatchesItsPattern checks that redact.lua's scan from each '@'
// redacts what string.gsub with the e-mail pattern would.
func TestRedactMatchesItsPattern(t *testing.T) {
	e := loadExample(t, "redact.lua")
	ref := newEngine(t, `
function on_complete(ev)
  local s, n1 = string.gsub(ev.response.content, "[%w%.%%%+%-_]+@[%w%-_]+%.[%w%.%-_]+", "[email]")
  local s, n2 = string.gsub(s, "sk%-[%w%-_]+", "[secret]")
  ev.response.content = s
  if n1 + n2 > 0 then ev.tags.redacted = tostring(n1 + n2) end
end`, Options{})
	inputs := []string{
		"", "@", "a@b.c", "@b.c", "a@b", "a@.c", "a@b.", "x@y@w.com", "a@b.c.d@e.f",
		"a@b.c+d@e.f", "x@y z@w.com", "jane.doe+x@example.co.uk, bob@corp.io!",
		"sk-abc@x.com", "mail a%b_c-d@e-f_g.h-i_j. then sk-1", "@@a@@b.c@@",
		"sk-", "sk-sk-a", "ssk-k sk-", "xsk-1 sk-@a.b",
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	const alphabet = "ak.@+-_% s"
	for range 2000 {
		b := make([]byte, rnd.IntN(24))
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		inputs = append(inputs, string(b))
	}
	for _, in := range inputs {
		got := &events.RequestCompleted{RequestBody: json.RawMessage(`{}`), Tags: map[string]string{}, Response: &events.CapturedResponse{Content: in}}
		want := &events.RequestCompleted{RequestBody: json.RawMessage(`{}`), Tags: map[string]string{}, Response: &events.CapturedResponse{Content: in}}
		if err := e.OnComplete(context.Background(), got); err != nil {
			t.Fatal(err)
		}
		if err := ref.OnComplete(context.Background(), want); err != nil {
			t.Fatal(err)
		}
		if got.Response.Content != want.Response.Content || !reflect.DeepEqual(got.Tags, want.Tags) {
			t.Errorf("%q: got %q %v, want %q %v", in, got.Response.Content, got.Tags, want.Response.Content, want.Tags)
		}
	}
}

// TestRedactLongBase64EndsInTime runs redact.lua on an event whose request
// body and captured response hold 100 KB of base64 image data. Retrying a
// pattern at every position took seconds on such data; the script now
// takes milliseconds. The deadline here is a second rather than the
// default 50ms so that a loaded machine running -race does not fail it;
// the default's margin is make bench's business.
func TestRedactLongBase64EndsInTime(t *testing.T) {
	e, err := Load([]string{filepath.Join(examplesDir, "redact.lua")}, Options{Logger: quietLogger(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	img := "data:image/png;base64," + strings.Repeat(b64, 100<<10/len(b64))
	body, _ := json.Marshal(map[string]any{"model": "m", "messages": []any{map[string]any{"role": "user", "content": img}}})
	ev := &events.RequestCompleted{RequestID: "r1", RequestBody: body, Response: &events.CapturedResponse{Content: img + " from jane@example.com"}}
	if err := e.OnComplete(context.Background(), ev); err != nil {
		t.Fatalf("OnComplete: %v", err)
	}
	if !strings.HasSuffix(ev.Response.Content, " from [email]") || ev.Tags["redacted"] != "1" {
		t.Errorf("address not redacted: tags %v", ev.Tags)
	}
	if string(ev.RequestBody) != string(body) {
		t.Error("request body changed")
	}
}

func TestRedactEscapedAddress(t *testing.T) {
	e := loadExample(t, "redact.lua")
	ev := &events.RequestCompleted{RequestID: "r1", RequestBody: json.RawMessage(`{"prompt":"jane\u0040example.com"}`)}
	if err := e.OnComplete(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, ev.RequestBody, `{"prompt":"[email]"}`)
}
