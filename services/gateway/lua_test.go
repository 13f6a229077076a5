package gateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway/internal/hooks"
)

// recordingBackend answers JSON and records the body and headers it got,
// and which backend name it is.
func recordingBackend(t *testing.T, name string, got chan<- map[string]any) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		if m == nil {
			m = map[string]any{}
		}
		m["_backend"] = name
		m["_alias_header"] = r.Header.Get("X-Model-Alias")
		m["_tenant_signature"] = r.Header.Get("X-Tenant-Signature")
		select {
		case got <- m:
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"secret sk-abc"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func examplesDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../examples/lua")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLuaExamplesThroughTheGateway(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	b := recordingBackend(t, "b", got)
	dir := examplesDir(t)
	yaml := fmt.Sprintf(`
backends:
  - { url: %q, name: vllm-a100 }
  - { url: %q, name: vllm-h100 }
api_keys:
  - { key: %q, id: unit }
lua:
  scripts: [%q, %q, %q, %q]
  timeout: 200ms
`, a.URL, b.URL, testKey, filepath.Join(dir, "model_alias.lua"), filepath.Join(dir, "route_by_header.lua"), filepath.Join(dir, "tenant_auth.lua"), filepath.Join(dir, "redact.lua"))
	gw, s := gatewayFromYAML(t, yaml)

	// model_alias: the backend sees the served model and a default max_tokens.
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"mail me at bob@example.com"}]}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	m := <-got
	if m["model"] != "qwen2.5-72b" || m["max_tokens"] != float64(512) || m["_alias_header"] != "gpt-4o" {
		t.Fatalf("backend saw %v", m)
	}
	ev := s.next(t)
	if ev.Model != "qwen2.5-72b" {
		t.Fatalf("event model %q", ev.Model)
	}
	// redact (on_complete): the email is gone from the event, a tag is set.
	if strings.Contains(string(ev.RequestBody), "bob@example.com") || len(ev.Tags) == 0 {
		t.Fatalf("on_complete did not redact/tag: body %s tags %v", ev.RequestBody, ev.Tags)
	}

	// route_by_header: X-Backend-Pool picks the backend by name.
	for i := 0; i < 4; i++ {
		hdr := withKey()
		hdr["X-Backend-Pool"] = "gpu-b"
		do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, hdr)
		if m := <-got; m["_backend"] != "b" {
			t.Fatalf("request %d went to %v", i, m["_backend"])
		}
		s.next(t)
	}

	// tenant_auth: a signed tenant is accepted without an API key; a bad
	// signature is refused.
	mac := hmac.New(sha256.New, []byte("acme-signing-secret"))
	mac.Write([]byte("acme"))
	good := map[string]string{"X-Tenant": "acme", "X-Tenant-Signature": hex.EncodeToString(mac.Sum(nil))}
	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, good)
	if resp.StatusCode != 200 {
		t.Fatalf("signed tenant: %d %s", resp.StatusCode, body)
	}
	// The signature is the tenant's credential: like an API key, it
	// does not reach the backend.
	if m := <-got; m["_tenant_signature"] != "" {
		t.Fatalf("the backend got X-Tenant-Signature %v", m["_tenant_signature"])
	}
	if ev := s.next(t); ev.KeyID != "tenant:acme" {
		t.Fatalf("tenant event key %q", ev.KeyID)
	}
	resp, _ = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, map[string]string{"X-Tenant": "acme", "X-Tenant-Signature": "00"})
	if resp.StatusCode != 401 {
		t.Fatalf("bad signature: %d", resp.StatusCode)
	}
}

func gatewayFromYAML(t *testing.T, yaml string) (*httptest.Server, *sink) {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return newTestGatewayFile(t, cfgPath)
}

// TestLibraryBombsFailTheirRequestOnly runs, in on_request, single library
// calls that the VM's per-instruction deadline check cannot stop: the
// request gets its error about when the deadline passes, and the next
// request is served.
func TestLibraryBombsFailTheirRequestOnly(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	// The memory bombs run under a timeout longer than they take to hit
	// the string limit, which is what stops them.
	for _, tc := range []struct {
		name, call, timeout, code string
	}{
		{"backtracking pattern", `string.rep("a", 65536):find("(.-)(.-)(.-)b")`, "50ms", "lua_timeout"},
		{"doubling string", `local s = string.rep("a", 1048576) for i = 1, 40 do s = s .. s end`, "5s", "lua_error"},
		{"table.concat", `local t = {} for i = 1, 1000 do t[i] = "x" end table.concat(t, string.rep("-", 1048576))`, "5s", "lua_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := filepath.Join(t.TempDir(), "bomb.lua")
			src := "function on_request(req)\n  if req.headers:get(\"X-Bomb\") then " + tc.call + " end\nend\n"
			if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			gw, _ := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q], timeout: %s}\n", a.URL, testKey, script, tc.timeout))
			bomb := withKey()
			bomb["X-Bomb"] = "1"
			start := time.Now()
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, bomb)
			// Unbounded, a bomb runs for minutes or takes the memory; 5 s
			// leaves a loaded machine under -race its margin.
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("answered after %s", took)
			}
			if resp.StatusCode != 500 || !strings.Contains(string(body), `"code":"`+tc.code+`"`) {
				t.Fatalf("bomb: %d %s, want 500 %s", resp.StatusCode, body, tc.code)
			}
			if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, withKey()); resp.StatusCode != 200 {
				t.Fatalf("next request: %d %s", resp.StatusCode, body)
			}
			<-got
		})
	}
}

// TestRunawayScriptsFailTheirRequestOnly runs `while true do end` in each
// hook: the request fails with 500 lua_timeout promptly, and 100 such
// requests at once leave the gateway healthy with its goroutines back.
func TestRunawayScriptsFailTheirRequestOnly(t *testing.T) {
	got := make(chan map[string]any, 1000)
	a := recordingBackend(t, "a", got)
	for _, hook := range []string{"on_auth", "on_request", "on_route", "on_response"} {
		t.Run(hook, func(t *testing.T) {
			dir := t.TempDir()
			script := filepath.Join(dir, "loop.lua")
			src := fmt.Sprintf("function %s(req, resp)\n  if req.headers:get(\"X-Loop\") then\n    while true do end\n  end\n  return nil\nend\n", hook)
			if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			// 200ms, not the default 50ms: the bursts below run 100
			// scripts at once, and on two CPUs under the race detector a
			// script that returns at once can wait longer than 50ms for
			// a CPU.
			gw, _ := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q], timeout: 200ms}\n", a.URL, testKey, script))
			loop := withKey()
			loop["X-Loop"] = "1"
			start := time.Now()
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, loop)
			took := time.Since(start)
			if resp.StatusCode != 500 || !strings.Contains(string(body), `"code":"lua_timeout"`) {
				t.Fatalf("runaway %s: %d %s", hook, resp.StatusCode, body)
			}
			if took > 5*time.Second {
				t.Fatalf("runaway %s took %s", hook, took)
			}
			burst := func(hdr map[string]string, want int) {
				var wg sync.WaitGroup
				var bad sync.Map
				for i := 0; i < 100; i++ {
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, hdr)
						if resp.StatusCode != want {
							bad.Store(i, resp.StatusCode)
						}
					}(i)
				}
				wg.Wait()
				bad.Range(func(k, v any) bool { t.Errorf("request %v: status %v, want %d", k, v, want); return true })
			}
			// The baseline is taken with the connection pools warm: 100
			// normal requests at once first.
			burst(withKey(), 200)
			http.DefaultClient.CloseIdleConnections()
			time.Sleep(100 * time.Millisecond)
			base := goruntime.NumGoroutine()
			burst(loop, 500)
			resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, withKey())
			if resp.StatusCode != 200 {
				t.Fatalf("normal request after runaways: %d %s", resp.StatusCode, body)
			}
			// No goroutine is left running a script: every call stopped
			// at its deadline. (Connection pools make a raw goroutine
			// count noisy, so look for script frames themselves.)
			deadline := time.Now().Add(5 * time.Second)
			for luaGoroutines() > 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := luaGoroutines(); n > 0 {
				t.Fatalf("%d goroutines still run Lua after the burst (baseline total %d, now %d)", n, base, goruntime.NumGoroutine())
			}
		})
	}
}

// luaGoroutines counts goroutines with a Lua VM frame on their stack.
func luaGoroutines() int {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, "gopher-lua") {
			n++
		}
	}
	return n
}

// TestOnResponseRepliesAreAskedUncompressed: with an on_response script
// the backend is asked for an uncompressed reply whatever the client
// accepts, so the script reads the reply and its usage is billed.
func TestOnResponseRepliesAreAskedUncompressed(t *testing.T) {
	seen := make(chan string, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Accept-Encoding")
		body := []byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}`)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") || r.Header.Get("X-Compress-Anyway") != "":
			w.Header().Set("Content-Encoding", "gzip")
			body = gzipBytes(t, string(body))
		case r.Header.Get("X-Identity") != "":
			w.Header().Set("Content-Encoding", "identity")
		case r.Header.Get("X-Twice") != "":
			// Two layers, named on two lines.
			w.Header().Add("Content-Encoding", "gzip")
			w.Header().Add("Content-Encoding", "gzip")
			body = gzipBytes(t, string(gzipBytes(t, string(body))))
		}
		_, _ = w.Write(body)
	}))
	defer backend.Close()
	script := filepath.Join(t.TempDir(), "on_response.lua")
	src := "function on_response(req, resp)\n  if resp.body:get(\"choices.1.message.content\") ~= \"hi\" then error(\"unreadable reply\") end\n  return nil\nend\n"
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, s := newTestGateway(t, backend.URL, fmt.Sprintf("lua: {scripts: [%q]}\nlogging: {capture_response: true}\n", script))
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer " + testKey, "Accept-Encoding": "gzip"})
	if ae := <-seen; ae != "identity" {
		t.Fatalf("backend was sent Accept-Encoding %q, want identity", ae)
	}
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"hi"`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if ev := s.next(t); ev.UsageSource != "backend" || ev.Usage.CompletionTokens != 22 {
		t.Fatalf("usage %+v source %s", ev.Usage, ev.UsageSource)
	} else if ev.Response == nil || ev.Response.Content != string(body) {
		// The capture is the reply the client got, as without a script.
		t.Fatalf("captured %+v, want the reply as sent: %s", ev.Response, body)
	}

	// A backend that compresses all the same: the gateway decompresses
	// the reply for the script and the bill, and the client gets it so.
	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer " + testKey, "Accept-Encoding": "gzip", "X-Compress-Anyway": "1"})
	<-seen
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || !strings.Contains(string(body), `"hi"`) {
		t.Fatalf("a reply compressed against the gateway's asking: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Encoding"), body)
	}
	if ev := s.next(t); ev.UsageSource != "backend" || ev.Usage.CompletionTokens != 22 {
		t.Fatalf("a reply compressed against the gateway's asking: usage %+v source %s", ev.Usage, ev.UsageSource)
	}

	// "identity" is no encoding: billed as the relay bills it.
	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer " + testKey, "X-Identity": "1"})
	<-seen
	if ev := s.next(t); resp.StatusCode != 200 || ev.UsageSource != "backend" || ev.Usage.CompletionTokens != 22 {
		t.Fatalf("Content-Encoding identity: %d %s, usage %+v source %s", resp.StatusCode, body, ev.Usage, ev.UsageSource)
	}
	// Two layers the gateway does not undo: the script cannot read the
	// reply, so the client is told so rather than sent it unread (or
	// decoded once and sent as if plain).
	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer " + testKey, "Accept-Encoding": "gzip", "X-Twice": "1"})
	<-seen
	s.next(t)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "an encoding on_response cannot read (gzip, gzip)") {
		t.Fatalf("a reply gzipped twice: %d %q %s, want 502 saying on_response cannot read it", resp.StatusCode, resp.Header.Values("Content-Encoding"), body)
	}
}

// TestIdentityKeyLimits: on_auth's limits override rate_limit.per_key, a
// fractional requests_per_second included.
func TestIdentityKeyLimits(t *testing.T) {
	cfg := &config.Config{}
	cfg.RateLimit.PerKey = config.PerKeyLimits{RequestsPerSecond: 10, RequestsPerMinute: 100, MaxConcurrent: 5}
	k := identityKey(&runtime{cfg: cfg}, &hooks.Identity{ID: "t", Limits: map[string]float64{"requests_per_second": 0.5, "requests_per_minute": 30, "total_quota": 1000}})
	want := config.PerKeyLimits{RequestsPerSecond: 0.5, RequestsPerMinute: 30, MaxConcurrent: 5}
	got := k.Limits
	got.Enabled = nil
	if got != want || !k.Limits.IsEnabled() || k.Quota != 1000 {
		t.Errorf("key limits %+v (enabled %v) quota %d, want %+v enabled, quota 1000", got, k.Limits.IsEnabled(), k.Quota, want)
	}
}

// TestOnAuthRunsWithoutAPIKeys: a config whose only authentication is an
// on_auth script (no api_keys, so auth is off by default) still runs it:
// its refusal is a 401, its identity names the event, and its "no
// opinion" lets the request in as anonymous.
func TestOnAuthRunsWithoutAPIKeys(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\nlua: {scripts: [%q]}\n", a.URL, filepath.Join(examplesDir(t), "tenant_auth.lua")))

	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, map[string]string{"X-Tenant": "acme", "X-Tenant-Signature": "00"})
	if resp.StatusCode != 401 {
		t.Fatalf("bad signature: %d %s", resp.StatusCode, body)
	}
	if ev := s.next(t); ev.KeyID != UnauthenticatedKeyID {
		t.Fatalf("bad signature's event key %q, want %q", ev.KeyID, UnauthenticatedKeyID)
	}

	mac := hmac.New(sha256.New, []byte("acme-signing-secret"))
	mac.Write([]byte("acme"))
	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, map[string]string{"X-Tenant": "acme", "X-Tenant-Signature": hex.EncodeToString(mac.Sum(nil))})
	if resp.StatusCode != 200 {
		t.Fatalf("signed tenant: %d %s", resp.StatusCode, body)
	}
	<-got
	if ev := s.next(t); ev.KeyID != "tenant:acme" {
		t.Fatalf("signed tenant's event key %q", ev.KeyID)
	}

	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("no tenant: %d %s", resp.StatusCode, body)
	}
	<-got
	if ev := s.next(t); ev.KeyID != "anonymous" {
		t.Fatalf("no tenant's event key %q", ev.KeyID)
	}
}

// TestOnAuthLimitsApplyWithoutPerKey: the limits of an on_auth identity
// hold when rate_limit.per_key sets none (or is switched off), as a file
// key's own limits do.
func TestOnAuthLimitsApplyWithoutPerKey(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	script := filepath.Join(t.TempDir(), "auth.lua")
	src := `function on_auth(req) return {id = "tenant", limits = {requests_per_minute = 1}} end` + "\n"
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, perKey := range []string{"", "rate_limit: {per_key: {enabled: false, requests_per_minute: 100}}\n"} {
		gw, _ := memoryLedgerGateway(t, fmt.Sprintf("backends: [{url: %q}]\nlua: {scripts: [%q]}\n%s", a.URL, script, perKey))
		if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, nil); resp.StatusCode != 200 {
			t.Fatalf("%q: first request: %d %s", perKey, resp.StatusCode, body)
		}
		<-got
		if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, nil); resp.StatusCode != 429 {
			t.Fatalf("%q: second request in the minute: %d %s, want 429", perKey, resp.StatusCode, body)
		}
	}
}

// TestClientGoneDuringHook: a client that leaves while a hook runs stops
// the hook, and its request is recorded as the client's doing (499
// client_closed_request), not as a failed script (500 lua_error).
func TestClientGoneDuringHook(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	script := filepath.Join(t.TempDir(), "slow.lua")
	if err := os.WriteFile(script, []byte("function on_request(req)\n  while true do end\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q], timeout: 10s}\n", a.URL, testKey, script))
	client := &http.Client{Timeout: 200 * time.Millisecond}
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"x"}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	start := time.Now()
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the request got an answer: %d", resp.StatusCode)
	}
	ev := s.next(t)
	if ev.StatusCode != 499 || ev.Error != "client_closed_request" {
		t.Fatalf("event status %d error %q, want 499 client_closed_request", ev.StatusCode, ev.Error)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the hook ran %s after its client left", took)
	}
}

// TestOnResponseStatus: resp.status is the final status the client gets,
// 200 to 999; a 1xx (which net/http would send as an interim response
// followed by a 200) fails the hook, and a status without a body (204,
// 304) is sent without one and recorded as served.
func TestOnResponseStatus(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	for _, tc := range []struct {
		status     string
		wantStatus int
		wantErr    string
	}{
		{"103", 500, "lua_error"},
		{"204", 204, ""},
		{"304", 304, ""},
		{"503", 503, ""},
	} {
		script := filepath.Join(t.TempDir(), "status.lua")
		if err := os.WriteFile(script, []byte("function on_response(req, resp) resp.status = "+tc.status+" end\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q]}\n", a.URL, testKey, script))
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, withKey())
		<-got
		ev := s.next(t)
		if resp.StatusCode != tc.wantStatus || ev.StatusCode != tc.wantStatus || ev.Error != tc.wantErr {
			t.Errorf("resp.status = %s: client got %d %q, event %d %q; want %d %q", tc.status, resp.StatusCode, body, ev.StatusCode, ev.Error, tc.wantStatus, tc.wantErr)
		}
		if tc.wantStatus == 204 && (len(body) > 0 || resp.Header.Get("Content-Length") != "") {
			t.Errorf("204 with a body %q or Content-Length %q", body, resp.Header.Get("Content-Length"))
		}
	}
}

// scriptGateway serves a gateway with one backend, the test key and one
// Lua script of source src.
func scriptGateway(t *testing.T, backendURL, src string) (*httptest.Server, *sink) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "hook.lua")
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q]}\n", backendURL, testKey, script))
}

// TestOnRequestBodyMustBeUTF8: a body on_request sets raw must be valid
// UTF-8 JSON, as a client's must: one that is not fails its request with
// lua_error rather than reaching the backend and the event.
func TestOnRequestBodyMustBeUTF8(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	gw, s := scriptGateway(t, a.URL, "function on_request(req)\n  req.body:set_raw('{\"model\":\"x\\255\"}')\nend\n")
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, withKey())
	if resp.StatusCode != 500 || !strings.Contains(string(body), `"code":"lua_error"`) {
		t.Fatalf("%d %s, want 500 lua_error", resp.StatusCode, body)
	}
	if ev := s.next(t); strings.Contains(string(ev.RequestBody), "\xff") {
		t.Fatalf("the event carries the script's bytes: %q", ev.RequestBody)
	}
	select {
	case r := <-got:
		t.Fatalf("the backend got %v", r)
	default:
	}
}

// TestKeyAScriptCopiesIntoTheBodyIsScrubbed: a script that copies the
// Authorization header into the body does not send the key to the
// backend or the event, as the header copy is not.
func TestKeyAScriptCopiesIntoTheBodyIsScrubbed(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	gw, s := scriptGateway(t, a.URL, "function on_request(req)\n  local auth = req.headers:get('Authorization')\n  req.body:set('copied', auth)\n  req.body:set('model', auth:sub(8))\nend\n")
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	r := <-got
	if c, _ := r["copied"].(string); strings.Contains(c, testKey) || !strings.Contains(c, "[REDACTED]") {
		t.Errorf("the backend got copied = %q", c)
	}
	ev := s.next(t)
	if strings.Contains(string(ev.RequestBody), testKey) || strings.Contains(ev.Model, testKey) {
		t.Errorf("the event holds the key: model %q, body %s", ev.Model, ev.RequestBody)
	}
}

// TestKeyAScriptQuotesIsScrubbed: the key a script puts into its
// rejection, or keeps from on_request for on_complete's tags and body,
// reaches neither the client, the event nor the log.
func TestKeyAScriptQuotesIsScrubbed(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	gw, s := scriptGateway(t, a.URL, `
stash = ""
function on_request(req)
  local auth = req.headers:get("Authorization")
  if req.headers:get("X-Refuse") then return {status = 403, message = "your key " .. auth, code = auth} end
  stash = auth
end
function on_complete(ev)
  ev.tags.k = stash
  ev.tags[stash] = "name"
  ev.request_body:set("copied", stash)
end
`)
	hdr := withKey()
	hdr["X-Refuse"] = "1"
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, hdr)
	if resp.StatusCode != 403 || strings.Contains(string(body), testKey) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if ev := s.next(t); strings.Contains(ev.Error, testKey) || strings.Contains(fmt.Sprint(ev.Tags), testKey) || strings.Contains(string(ev.RequestBody), testKey) {
		t.Fatalf("the refusal's event holds the key: error %q, tags %v, body %s", ev.Error, ev.Tags, ev.RequestBody)
	}
	resp, body = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, withKey())
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	ev := s.next(t)
	if strings.Contains(fmt.Sprint(ev.Tags), testKey) || strings.Contains(string(ev.RequestBody), testKey) || ev.Tags["k"] != "Bearer [REDACTED]" {
		t.Fatalf("the event holds the key: tags %v, body %s", ev.Tags, ev.RequestBody)
	}
}

// TestLuaRejectionsAreTypedByStatus: an on_request rejection's error type
// is OpenAI's for its status, and a 429 says when to retry, as every other
// 429 the gateway sends does.
func TestLuaRejectionsAreTypedByStatus(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	gw, _ := scriptGateway(t, a.URL, "function on_request(req)\n  local s = tonumber(req.headers:get('X-Status'))\n  if s then return {status = s, message = 'no'} end\nend\n")
	for status, want := range map[int]string{400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
		429: "rate_limit_error", 503: "api_error"} {
		hdr := withKey()
		hdr["X-Status"] = strconv.Itoa(status)
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"x"}`, hdr)
		if resp.StatusCode != status || !strings.Contains(string(body), `"type":"`+want+`"`) {
			t.Errorf("%d: %d %s, want type %s", status, resp.StatusCode, body, want)
		}
		if (status == 429) != (resp.Header.Get("Retry-After") == "1") {
			t.Errorf("%d: Retry-After %q", status, resp.Header.Get("Retry-After"))
		}
	}
}

// TestOnResponseLeavesStreamsWithoutContentType: an event stream sent
// without a Content-Type is a stream with an on_response script loaded
// too: relayed as it comes and billed, not held for the script (which
// sees replies that are not streams) and billed nothing; a JSON reply
// without one still goes to the script.
func TestOnResponseLeavesStreamsWithoutContentType(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil
		if strings.Contains(r.Header.Get("X-Want"), "json") {
			_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
			return
		}
		_, _ = io.WriteString(w, "d")
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		_, _ = io.WriteString(w, `ata: {"choices":[{"index":0,"delta":{"content":"hello there"}}]}`+"\n\n"+
			`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`+"\n\ndata: [DONE]\n\n")
	}))
	defer backend.Close()
	script := filepath.Join(t.TempDir(), "on_response.lua")
	src := "function on_response(req, resp)\n  resp.headers:set(\"X-Seen-By-Script\", \"1\")\n  return nil\nend\n"
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, s := newTestGateway(t, backend.URL, fmt.Sprintf("lua: {scripts: [%q]}\n", script))
	resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","stream":true,"stream_options":{"include_usage":true}}`, withKey())
	ev := s.next(t)
	if resp.StatusCode != 200 || resp.Header.Get("X-Seen-By-Script") != "" || !strings.Contains(string(body), "hello there") ||
		ev.UsageSource != "backend" || ev.Usage.CompletionTokens != 2 || !ev.IsStream {
		t.Fatalf("stream: %d %v %q; event %+v (%s)", resp.StatusCode, resp.Header, body, ev.Usage, ev.UsageSource)
	}
	resp, _ = do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, map[string]string{"Authorization": "Bearer " + testKey, "X-Want": "json"})
	if ev := s.next(t); resp.Header.Get("X-Seen-By-Script") != "1" || ev.Usage.CompletionTokens != 1 {
		t.Fatalf("json: script header %q, event %+v", resp.Header.Get("X-Seen-By-Script"), ev.Usage)
	}
}

// TestLuaErrorsAreCountedByHook: every failed hook call is counted in
// llmproxy_lua_errors_total by hook and reason; a failed on_response, whose
// request was admitted and answered, is not an admission rejection.
func TestLuaErrorsAreCountedByHook(t *testing.T) {
	got := make(chan map[string]any, 10)
	a := recordingBackend(t, "a", got)
	script := filepath.Join(t.TempDir(), "fail.lua")
	src := `function on_request(req)
  if req.headers:get("X-Fail") == "request" then error("request") end
  if req.headers:get("X-Fail") == "loop" then while true do end end
  return nil
end
function on_response(req, resp)
  if req.headers:get("X-Fail") == "response" then error("response") end
  return nil
end
function on_complete(ev)
  if ev.model == "fail-complete" then error("complete") end
end
`
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q], timeout: 200ms}\n", a.URL, testKey, script))
	reg := prometheus.NewRegistry()
	gw, s := serveOptions(t, Options{Config: cfg, Registerer: reg})
	for _, tc := range []struct {
		fail, model string
		status      int
	}{
		{"request", "m", 500},
		{"loop", "m", 500},
		{"response", "m", 500},
		{"", "fail-complete", 200},
	} {
		hdr := withKey()
		if tc.fail != "" {
			hdr["X-Fail"] = tc.fail
		}
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"`+tc.model+`"}`, hdr)
		if resp.StatusCode != tc.status {
			t.Fatalf("X-Fail %q model %s: %d %s, want %d", tc.fail, tc.model, resp.StatusCode, body, tc.status)
		}
		s.next(t)
		if tc.fail == "response" || tc.fail == "" {
			<-got
		}
	}
	for _, c := range []struct{ hook, reason string }{
		{"on_request", "error"}, {"on_request", "timeout"}, {"on_response", "error"}, {"on_complete", "error"},
	} {
		if n := counted(t, reg, "llmproxy_lua_errors_total", map[string]string{"hook": c.hook, "reason": c.reason}); n != 1 {
			t.Errorf("llmproxy_lua_errors_total{hook=%q,reason=%q} = %v, want 1", c.hook, c.reason, n)
		}
	}
	for reason, want := range map[string]float64{"lua_error": 1, "lua_timeout": 1} {
		if n := counted(t, reg, "llmproxy_admission_rejections_total", map[string]string{"reason": reason}); n != want {
			t.Errorf("llmproxy_admission_rejections_total{reason=%q} = %v, want %v (on_response's failure is no rejection)", reason, n, want)
		}
	}
}

// TestLuaErrorsLogNoKey: a script's error() that quotes the key it sees
// (the Authorization header), in on_request and in on_complete, is logged
// without it, as a rejection's text reaches the client without it.
func TestLuaErrorsLogNoKey(t *testing.T) {
	script := filepath.Join(t.TempDir(), "e.lua")
	src := `auth = ""
function on_request(req)
  llmproxy.log("warn", "hdr=" .. req.headers:get("Authorization"))
  print("hdr=", req.headers:get("Authorization"))
  if req.headers:get("X-Fail") then error("cannot handle " .. req.headers:get("Authorization") .. " or " .. req.headers:get("X-Api-Key")) end
  auth = req.headers:get("Authorization")
end
function on_complete(ev)
  if auth == "" then return end
  llmproxy.log("info", "hdr=" .. auth)
  error("cannot record " .. auth)
end
`
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q]}\n", okBackend(t), testKey, script))
	lines := make(chan map[string]string, 1000)
	gw, s := serveOptions(t, Options{Config: cfg, Logger: slog.New(recordHandler{out: lines})})
	hdr := withKey()
	hdr["X-Fail"] = "1"
	// Another key beside it, in x-api-key, which a script may quote too.
	const other = "sk-llmproxy-another-key-0123456789"
	hdr["X-Api-Key"] = other
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, hdr); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	s.next(t)
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	s.next(t)
	failed, logged := 0, 0
	for len(lines) > 0 {
		m := <-lines
		if strings.Contains(fmt.Sprint(m), testKey) || strings.Contains(fmt.Sprint(m), other) {
			t.Errorf("a log line holds the key: %v", m)
		}
		if strings.Contains(m["err"], "Bearer [REDACTED]") {
			failed++
		}
		if strings.HasPrefix(m["msg"], "hdr=") && strings.Contains(m["msg"], "Bearer [REDACTED]") {
			logged++
		}
	}
	if failed != 2 {
		t.Errorf("%d lines name the scripts' errors, want 2 (on_request, on_complete)", failed)
	}
	// on_request's llmproxy.log and print, twice; on_complete's once.
	if logged != 5 {
		t.Errorf("%d lines the scripts logged with the key redacted, want 5", logged)
	}
}

// TestOnResponseStatusDoesNotDecideBilling: what is billed follows the
// engine's reply, not the status an on_response script gives the client:
// a whole reply (200, no usage reported) made a 503 is billed an estimate
// of what was delivered, and an engine's refusal (400, no usage) made a
// 200 bills nothing and is recorded backend_error.
func TestOnResponseStatusDoesNotDecideBilling(t *testing.T) {
	for _, tc := range []struct {
		name           string
		engine, script int
		body           string
		billed         bool
		wantErr        string
	}{
		{"whole reply made 503", 200, 503, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"a long answer about the sea"},"finish_reason":"stop"}]}`, true, ""},
		{"refusal made 200", 400, 200, `{"object":"error","message":"This model's maximum context length is 10 tokens","type":"BadRequestError","code":400}`, false, "backend_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.engine)
				_, _ = io.WriteString(w, tc.body)
			}))
			defer backend.Close()
			gw, s := scriptGateway(t, backend.URL, fmt.Sprintf("function on_response(req, resp) resp.status = %d end\n", tc.script))
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":"tell me a long story about the sea"}]}`, withKey())
			if resp.StatusCode != tc.script {
				t.Fatalf("client got %d %s, want the script's %d", resp.StatusCode, body, tc.script)
			}
			ev := s.next(t)
			if billed := ev.Usage.TotalTokens > 0; billed != tc.billed || ev.Error != tc.wantErr {
				t.Errorf("event error %q, usage %+v (%s); want billed %v, error %q", ev.Error, ev.Usage, ev.UsageSource, tc.billed, tc.wantErr)
			}
		})
	}
}

// TestOnAuthFailsOpen: with lua.fail_open an on_auth that fails (an error
// quoting the key, or a loop past the time limit) leaves the decision to
// the key check: a known key is served, none is refused. The failure is
// counted and logged with the request's id and without the key.
func TestOnAuthFailsOpen(t *testing.T) {
	script := filepath.Join(t.TempDir(), "auth.lua")
	src := `function on_auth(req)
  if req.headers:get("X-Loop") then while true do end end
  if req.headers:get("X-Id-Is-Token") then return {id = "user-" .. string.sub(req.headers:get("Authorization") or "", 8)} end
  error("cannot parse credential " .. (req.headers:get("Authorization") or "none"))
end
`
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q], timeout: 100ms, fail_open: true}\n", okBackend(t), testKey, script))
	lines := make(chan map[string]string, 1000)
	reg := prometheus.NewRegistry()
	gw, s := serveOptions(t, Options{Config: cfg, Registerer: reg, Logger: slog.New(recordHandler{out: lines})})

	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusOK {
		t.Fatalf("a known key with on_auth failing open: %d %s", resp.StatusCode, b)
	}
	s.next(t)
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no key with on_auth failing open: %d %s", resp.StatusCode, b)
	}
	s.next(t)
	hdr := withKey()
	hdr["X-Loop"] = "1"
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, hdr); resp.StatusCode != http.StatusOK {
		t.Fatalf("a known key with on_auth past its time limit: %d %s", resp.StatusCode, b)
	}
	s.next(t)

	// An identity named by the key is the script's error: failing open,
	// the key check decides (a known key, served as itself).
	hdr = withKey()
	hdr["X-Id-Is-Token"] = "1"
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, hdr); resp.StatusCode != http.StatusOK {
		t.Fatalf("a known key, on_auth naming it by the key, failing open: %d %s", resp.StatusCode, b)
	}
	if ev := s.next(t); strings.Contains(ev.KeyID+ev.APIKey, testKey[8:]) || strings.HasPrefix(ev.APIKey, "lua:") {
		t.Errorf("failing open, the event is the script's identity: key_id %q api_key %q", ev.KeyID, ev.APIKey)
	}

	for reason, want := range map[string]float64{"error": 3, "timeout": 1} {
		if n := counted(t, reg, "llmproxy_lua_errors_total", map[string]string{"hook": "on_auth", "reason": reason}); n != want {
			t.Errorf("llmproxy_lua_errors_total{hook=on_auth,reason=%s} = %v, want %v", reason, n, want)
		}
	}
	named := false
	for len(lines) > 0 {
		m := <-lines
		if strings.Contains(fmt.Sprint(m), testKey) {
			t.Errorf("a log line holds the key: %v", m)
		}
		if m["msg"] == "lua on_auth failed; failing open" && m["request_id"] != "" && strings.Contains(m["err"], "Bearer [REDACTED]") {
			named = true
		}
	}
	if !named {
		t.Error("no line says on_auth failed open, with the request's id and the key redacted")
	}
}

// TestScriptNamesHoldingTheKey: names a script makes up from the request
// never carry the client's key out: an on_auth identity whose id is the
// caller's token is the script's error (its id would name the caller in
// events, logs and counters), and an on_route backend name quoting it is
// logged without it.
func TestScriptNamesHoldingTheKey(t *testing.T) {
	script := filepath.Join(t.TempDir(), "names.lua")
	src := `function on_auth(req)
  local token = string.sub(req.headers:get("Authorization") or "", 8)
  if req.headers:get("X-Id-Is-Token") then return {id = "user-" .. token} end
  if req.headers:get("X-User-Is-Token") then return {id = "tenant", user_id = "u-" .. token} end
  return {id = "tenant"}
end
function on_route(req)
  return "pool-" .. (req.headers:get("Authorization") or "")
end
`
	if err := os.WriteFile(script, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\nlua: {scripts: [%q]}\n", okBackend(t), script))
	lines := make(chan map[string]string, 1000)
	gw, s := serveOptions(t, Options{Config: cfg, Logger: slog.New(recordHandler{out: lines})})

	hdr := withKey()
	hdr["X-Id-Is-Token"] = "1"
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, hdr); resp.StatusCode != http.StatusInternalServerError || strings.Contains(string(b), testKey) {
		t.Fatalf("an identity named by the token: %d %s, want 500 lua_error", resp.StatusCode, b)
	}
	if ev := s.next(t); strings.Contains(ev.APIKey+ev.KeyID, testKey[8:]) {
		t.Errorf("the event names the caller by its key: api_key %q key_id %q", ev.APIKey, ev.KeyID)
	}
	hdr = withKey()
	hdr["X-User-Is-Token"] = "1"
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, hdr); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("an identity whose user is named by the token: %d %s, want 500 lua_error", resp.StatusCode, b)
	}
	if ev := s.next(t); strings.Contains(ev.UserID, testKey[8:]) {
		t.Errorf("the event names the user by the key: user_id %q", ev.UserID)
	}
	if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusOK {
		t.Fatalf("an identity named tenant, routed to an unknown backend: %d %s", resp.StatusCode, b)
	}
	if ev := s.next(t); ev.KeyID != "tenant" && !strings.Contains(ev.APIKey, "tenant") {
		t.Errorf("event api_key %q key_id %q, want the tenant", ev.APIKey, ev.KeyID)
	}
	unknown := false
	for len(lines) > 0 {
		m := <-lines
		if strings.Contains(fmt.Sprint(m), testKey[8:]) {
			t.Errorf("a log line holds the key: %v", m)
		}
		if m["msg"] == "on_route named an unknown backend" && strings.Contains(m["backend"], "[REDACTED]") {
			unknown = true
		}
	}
	if !unknown {
		t.Error("no line names the unknown backend on_route gave, without the key")
	}
}

// TestLuaFailuresLogNoLinePerRequest: a script that fails every request
// gets every request its 500 and the log one line per 10 s, the next one
// saying how many were left out, as Redis's failures do.
func TestLuaFailuresLogNoLinePerRequest(t *testing.T) {
	script := filepath.Join(t.TempDir(), "broken.lua")
	if err := os.WriteFile(script, []byte("function on_request(req) error(\"broken\") end\nfunction on_complete(ev) error(\"broken too\") end\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlua: {scripts: [%q]}\n", okBackend(t), testKey, script))
	lines := make(chan map[string]string, 1000)
	gw, s := serveOptions(t, Options{Config: cfg, Logger: slog.New(recordHandler{out: lines})})
	for range 20 {
		if resp, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		s.next(t)
	}
	n, complete := 0, 0
	for len(lines) > 0 {
		m := <-lines
		if m["msg"] == "lua hook failed" {
			n++
		}
		if strings.HasPrefix(m["msg"], "on_complete failed") {
			complete++
		}
	}
	if n != 1 || complete != 1 {
		t.Errorf("%d lines say a hook failed and %d that on_complete did over 20 failing requests within 10 s, want 1 each", n, complete)
	}
}
