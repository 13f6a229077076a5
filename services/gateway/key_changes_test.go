package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
)

// TestKeyChangesTakeEffectAtOnce: a key of the Redis key store disabled,
// enabled or deleted (by `llmproxy keys` or the admin API, on any host) takes
// effect on a gateway at once, though the gateway cached what it read for
// auth.DefaultCacheTTL: the change is announced, and the gateway forgets the
// key.
func TestKeyChangesTakeEffectAtOnce(t *testing.T) {
	rdb, prefix := redistest.New(t, "keychanges")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	cfg := parseConfig(t, `
backends: [{url: "`+backend.URL+`"}]
auth: {enabled: true, storage: redis}
redis: {url: "redis://unused"}
`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, err := New(Options{Config: cfg, Redis: rdb, RedisPrefix: prefix, Events: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(ctx)
	gw := httptest.NewServer(g.Handler())
	defer gw.Close()
	status := func(secret string) int {
		resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[]}`, map[string]string{"Authorization": "Bearer " + secret})
		return resp.StatusCode
	}
	// within waits for want, well inside the cache's TTL: without the
	// announcement the cached answer would stand that long.
	within := func(what, secret string, want int) {
		t.Helper()
		deadline := time.Now().Add(auth.DefaultCacheTTL / 2)
		for {
			got := status(secret)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: still %d after %v, want %d", what, got, auth.DefaultCacheTTL/2, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{ID: "live"})
	if err != nil {
		t.Fatal(err)
	}
	if s := status(secret); s != 200 {
		t.Fatalf("a new key: %d", s)
	}
	if _, err := keys.SetStatus(ctx, rdb, prefix, "live", keys.StatusDisabled); err != nil {
		t.Fatal(err)
	}
	within("disabled", secret, http.StatusForbidden)
	if _, err := keys.SetStatus(ctx, rdb, prefix, "live", keys.StatusActive); err != nil {
		t.Fatal(err)
	}
	within("enabled again", secret, 200)
	if err := keys.Delete(ctx, rdb, prefix, "live"); err != nil {
		t.Fatal(err)
	}
	within("deleted", secret, http.StatusUnauthorized)
}
