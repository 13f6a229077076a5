package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

func TestCheckTarget(t *testing.T) {
	const backends = "backends: [{url: http://127.0.0.1:9}]\n"
	const natsURL = "nats: {url: nats://127.0.0.1:4222}\n"
	const redisURL = "redis: {url: redis://127.0.0.1:6379/15}\n"
	const pg = "logging: {postgres: {url: postgres://postgres@127.0.0.1:5432/test}}\n"
	cases := []struct {
		name, target, yaml string
		want               []string // one line each; none = accepted
	}{
		{"all needs nothing", "all", "", nil},
		{"gateway with both", "gateway", natsURL + redisURL, nil},
		{"gateway on a cluster", "gateway", natsURL + "redis: {addrs: [127.0.0.1:7000]}\n", nil},
		{"gateway without redis", "gateway", natsURL, []string{"--target gateway needs redis.url (or redis.addrs, or redis.sentinel): gateways admit requests against the shared ledger; without it no token quota would be enforced"}},
		{"gateway without either", "gateway", "", []string{"--target gateway needs nats.url", "--target gateway needs redis.url"}},
		{"meter without redis", "meter", natsURL, []string{"--target meter needs redis.url"}},
		{"notifier with nats", "notifier", natsURL, nil},
		{"notifier without nats", "notifier", redisURL, []string{"--target notifier needs nats.url"}},
		{"recorder without postgres", "recorder", natsURL, []string{"--target recorder needs logging.postgres.url"}},
		{"recorder with both", "recorder", natsURL + pg, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(backends+c.yaml), "c.yaml")
			if err != nil {
				t.Fatal(err)
			}
			err = checkTarget(cfg, c.target)
			if c.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(c.want) {
				t.Fatalf("error %q: want %d lines", err, len(c.want))
			}
			for i, w := range c.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d = %q, want it to start with %q", i, lines[i], w)
				}
			}
		})
	}
}

// TestServeGatewayWithoutRedis: serve --target gateway without Redis exits
// with status 1 at once instead of serving requests with no quota.
func TestServeGatewayWithoutRedis(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "llmproxy.yaml")
	cfg := "listen: 127.0.0.1:0\ndata_dir: " + filepath.Join(dir, "data") + "\nnats: {url: nats://127.0.0.1:1}\nbackends: [{url: http://127.0.0.1:9}]\n" +
		"api_keys: [{key: sk-test-1234567890, total_quota: 1000}]\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() { done <- cmdServe([]string{"--config", path, "--target", "gateway"}) }()
	select {
	case code := <-done:
		if code != 1 {
			t.Fatalf("serve --target gateway without redis.url = %d, want 1", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve --target gateway without redis.url is still running after 10 s")
	}
}
