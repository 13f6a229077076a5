package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	keyAlpha = "sk-llmproxy-e2e-alpha-0001"
	keyBeta  = "sk-llmproxy-e2e-beta-0002"
)

// allConfig is a single-binary config with two keys and one usage hook.
func allConfig(listen, admin, dataDir, backend, hook string) string {
	return fmt.Sprintf(`
listen: %q
data_dir: %q
admin: { listen: %q, token: "e2e-admin-token" }
backends:
  - url: %q
usage_hook:
  url: %q
  retry: 20
auth:
  enabled: true
  storage: file
api_keys:
  - key: %q
    id: alpha
    name: Alpha team
    user_id: user_a
    quota_reset_period: daily
  - key: %q
    id: beta
    name: Beta team
    user_id: user_b
logging: { level: warn }
`, listen, dataDir, admin, backend, hook, keyAlpha, keyBeta)
}

// cannedEngine answers like an engine with fixed bytes, so a test can
// compare what the client receives with what the engine sent, byte for byte.
type cannedEngine struct {
	mu       sync.Mutex
	lastAuth string
}

const cannedJSON = `{"id":"chatcmpl-canned","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi  there \u00e9\n"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`

var cannedStream = []string{
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
	": keep-alive comment\n\n",
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":\"stop\"}]}\n\n",
}

const cannedUsageChunk = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n"

func (c *cannedEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c.mu.Lock()
	c.lastAuth = r.Header.Get("Authorization") + r.Header.Get("X-Api-Key")
	c.mu.Unlock()
	if !bytes.Contains(body, []byte(`"stream":true`)) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Engine", "canned")
		_, _ = w.Write([]byte(cannedJSON))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	f := w.(http.Flusher)
	for _, ev := range cannedStream {
		_, _ = w.Write([]byte(ev))
		f.Flush()
	}
	if bytes.Contains(body, []byte(`"include_usage":true`)) {
		_, _ = w.Write([]byte(cannedUsageChunk))
	}
	_, _ = w.Write([]byte("data: [DONE]\n\n"))
}

func TestServeAllRelaysBytesExactly(t *testing.T) {
	engine := &cannedEngine{}
	backend := httptest.NewServer(engine)
	defer backend.Close()
	hook := httptest.NewServer(&webhookReceiver{})
	defer hook.Close()
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, allConfig(listen, admin, filepath.Join(dir, "data"), backend.URL, hook.URL))
	start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")

	resp, body := post(t, gw+"/v1/chat/completions", keyAlpha, "", chatBody(1, false, false), nil)
	if resp.StatusCode != 200 || string(body) != cannedJSON {
		t.Fatalf("non-stream: status %d, body differs from the engine's:\n got %q\nwant %q", resp.StatusCode, body, cannedJSON)
	}
	if resp.Header.Get("X-Engine") != "canned" || resp.Header.Get("X-Request-Id") == "" {
		t.Fatalf("headers not passed through: %v", resp.Header)
	}
	engine.mu.Lock()
	leaked := engine.lastAuth
	engine.mu.Unlock()
	if leaked != "" {
		t.Fatalf("the client's key reached the backend: %q", leaked)
	}

	wantNoUsage := strings.Join(cannedStream, "") + "data: [DONE]\n\n"
	resp, body = post(t, gw+"/v1/chat/completions", keyAlpha, "", chatBody(1, true, false), nil)
	if resp.StatusCode != 200 || string(body) != wantNoUsage {
		t.Fatalf("stream without usage asked: the client must see the engine's events, in order, without the usage chunk:\n got %q\nwant %q", body, wantNoUsage)
	}
	wantUsage := strings.Join(cannedStream, "") + cannedUsageChunk + "data: [DONE]\n\n"
	resp, body = post(t, gw+"/v1/chat/completions", keyAlpha, "", chatBody(1, true, true), nil)
	if resp.StatusCode != 200 || string(body) != wantUsage {
		t.Fatalf("stream with usage asked:\n got %q\nwant %q", body, wantUsage)
	}
	if got := resp.Header.Get("Content-Type"); got != "text/event-stream" {
		t.Fatalf("content type %q", got)
	}

	// Bad keys and bad input get OpenAI-shaped errors.
	resp, body = post(t, gw+"/v1/chat/completions", "sk-llmproxy-wrong-9999", "", chatBody(1, false, false), nil)
	if resp.StatusCode != 401 || !bytes.Contains(body, []byte(`"code":"invalid_api_key"`)) || bytes.Contains(body, []byte("wrong-9999")) {
		t.Fatalf("bad key: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, gw+"/v1/chat/completions", keyAlpha, "", []byte(`{"model":`), nil)
	if resp.StatusCode != 400 || !bytes.Contains(body, []byte(`"error":{`)) {
		t.Fatalf("bad json: %d %s", resp.StatusCode, body)
	}
}

func TestServeAllMetersAndNotifiesAcrossRestart(t *testing.T) {
	mock := startMock(t, "--tokens", "9")
	recv, hook := startReceiver(t)

	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, allConfig(listen, admin, filepath.Join(dir, "data"), mock, hook.URL))
	srv := start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")

	const n = 24
	wantA, idsA := mixedLoad(t, gw, mock, keyAlpha, "all-a", n)
	wantB, idsB := mixedLoad(t, gw, mock, keyBeta, "all-b", n/2)
	waitLedger(t, cfg, map[string]tokens{"alpha": wantA, "beta": wantB}, map[string]int64{"alpha": n, "beta": n / 2})

	eventually(t, 30*time.Second, "webhooks delivered", func() (bool, string) {
		return recv.count() == len(idsA)+len(idsB), fmt.Sprintf("%d payloads", recv.count())
	})
	payloads := recv.snapshot()
	for _, id := range append(idsA, idsB...) {
		p, ok := payloads[id]
		if !ok {
			t.Fatalf("no webhook for %s", id)
		}
		checkWebhookPayload(t, id, p, keyAlpha, keyBeta)
	}
	if p := payloads[idsA[0]]; p["user_id"] != "user_a" || p["endpoint"] != "/v1/chat/completions" || p["status_code"].(float64) != 200 {
		t.Fatalf("payload fields wrong: %v", p)
	}

	// The ledger survives a restart of the single binary.
	srv.stop(syscall.SIGTERM)
	if code := srv.exitCode(); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM", code)
	}
	rows, err := usageOf(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rows["alpha"].TotalTokens != wantA.prompt+wantA.completion {
		t.Fatalf("after stop: alpha %+v, want %d tokens", rows["alpha"], wantA.prompt+wantA.completion)
	}
	srv.start()
	waitHTTP(t, gw+"/healthz")
	more, _ := mixedLoad(t, gw, mock, keyAlpha, "all-a2", 6)
	wantA.prompt += more.prompt
	wantA.completion += more.completion
	waitLedger(t, cfg, map[string]tokens{"alpha": wantA, "beta": wantB}, map[string]int64{"alpha": n + 6, "beta": n / 2})
}

// waitLedger waits until `llmproxy usage --json` shows exactly want, then
// checks that it stays so (nothing counted twice late).
func waitLedger(t testing.TB, cfg string, want map[string]tokens, requests map[string]int64) {
	t.Helper()
	match := func() (bool, string) {
		rows, err := usageOf(t, cfg)
		if err != nil {
			return false, err.Error()
		}
		for k, w := range want {
			r := rows[k]
			if r.PromptTokens != w.prompt || r.CompletionTokens != w.completion || r.TotalTokens != w.prompt+w.completion || r.Requests != requests[k] {
				return false, fmt.Sprintf("%s: got %+v, want prompt %d completion %d requests %d", k, r, w.prompt, w.completion, requests[k])
			}
		}
		return true, ""
	}
	eventually(t, 60*time.Second, "ledger exact", match)
	time.Sleep(500 * time.Millisecond)
	if ok, state := match(); !ok {
		t.Fatalf("ledger changed after settling: %s", state)
	}
}
