package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// laterRedis reserves an address where nothing listens until up is
// called; from then on it forwards every connection to the test Redis
// (REDIS_URL, default redis://127.0.0.1:6379/15). It returns the redis://
// URL of that address (the test Redis's database) and a key prefix unique
// to the test, whose keys are deleted when it ends. Without the test Redis
// the test is skipped, or fails when CI=true.
func laterRedis(t *testing.T) (url, prefix string, up func()) {
	t.Helper()
	rdb, _, prefix := testRedis(t, "serve")
	opts := rdb.Options()
	addr := freeAddr(t)
	var (
		mu    sync.Mutex
		ln    net.Listener
		conns []net.Conn
	)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if ln != nil {
			ln.Close()
		}
		for _, c := range conns {
			c.Close()
		}
	})
	up = func() {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		ln = l
		mu.Unlock()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				r, err := net.Dial("tcp", opts.Addr)
				if err != nil {
					c.Close()
					continue
				}
				mu.Lock()
				conns = append(conns, c, r)
				mu.Unlock()
				go func() { _, _ = io.Copy(r, c); r.Close() }()
				go func() { _, _ = io.Copy(c, r); c.Close() }()
			}
		}()
	}
	return fmt.Sprintf("redis://%s/%d", addr, opts.DB), prefix, up
}

// TestServeWhileRedisIsDown: the single binary with its ledger and limits
// in a Redis that is not there yet starts anyway, as it would if Redis
// went away later: every request is refused with 503
// rate_limiter_unavailable and /readyz says Redis is down. Once Redis
// answers the same process admits requests and the meter counts them.
func TestServeWhileRedisIsDown(t *testing.T) {
	backend := chatBackend(t)
	redisURL, prefix, redisUp := laterRedis(t)
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf(`listen: %q
data_dir: %q
redis: { url: %q, prefix: %q }
admin: { listen: %q, token: admin-token-0123456789 }
backends:
  - url: %q
api_keys:
  - { key: sk-llmproxy-redis-down, id: rdown }
rate_limit: { storage: redis, per_key: { max_concurrent: 10 } }
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), redisURL, prefix, admin, backend.URL)
	serveAll(t, path, yaml)

	chat := func() (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/v1/chat/completions",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`))
		req.Header.Set("Authorization", "Bearer sk-llmproxy-redis-down")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 20*time.Second, "requests refused with 503 while Redis is down", func() (bool, string) {
		code, body := chat()
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"code":"rate_limiter_unavailable"`), fmt.Sprint(code, " ", body)
	})
	resp, err := http.Get("http://" + listen + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "redis") {
		t.Fatalf("/readyz with Redis down = %d %s; want 503 naming redis", resp.StatusCode, b)
	}

	redisUp()
	eventually(t, 30*time.Second, "a request admitted once Redis answers", func() (bool, string) {
		code, body := chat()
		return code == http.StatusOK, fmt.Sprint(code, " ", body)
	})
	eventually(t, 60*time.Second, "the request counted by the meter", func() (bool, string) {
		b := adminGet(admin, "/admin/usage?key=rdown&period=never")
		return strings.Contains(b, `"total_tokens":4,`), b
	})
}

// chatBackend is an engine that answers every request with one chat
// completion of 3 prompt and 1 completion tokens; it stops when the test
// ends.
func chatBackend(t *testing.T) *httptest.Server {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"mock-model",`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	}))
	t.Cleanup(backend.Close)
	return backend
}
