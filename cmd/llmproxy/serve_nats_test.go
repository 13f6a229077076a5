package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// serveAll writes yaml to path and runs serve --target all on it until the
// test ends.
func serveAll(t *testing.T, path, yaml string) {
	t.Helper()
	serveTarget(t, path, yaml, "all")
}

// serveTarget writes yaml to path and runs serve --target target on it
// until the test ends.
func serveTarget(t *testing.T, path, yaml, target string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, path, target, "", slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
}

// TestServeAllWhileNATSIsDown: the single binary pointed at an external
// NATS that is down serves at once, keeping its events in the outbox; the
// meter starts when NATS comes up and counts them.
func TestServeAllWhileNATSIsDown(t *testing.T) {
	backend := chatBackend(t)
	natsAddr := freeAddr(t)
	host, portStr, _ := net.SplitHostPort(natsAddr)
	port, _ := strconv.Atoi(portStr)
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf(`listen: %q
data_dir: %q
nats: { url: "nats://%s" }
admin: { listen: %q, token: admin-token-0123456789 }
backends:
  - url: %q
auth: { enabled: true, storage: file }
api_keys:
  - { key: sk-llmproxy-nats-down, id: down }
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), natsAddr, admin, backend.URL)
	serveAll(t, path, yaml)

	eventually(t, 15*time.Second, "the gateway serving with NATS down", func() (bool, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/v1/chat/completions",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`))
		req.Header.Set("Authorization", "Bearer sk-llmproxy-nats-down")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})

	startNATS(t, host, port)
	eventually(t, 60*time.Second, "the request counted once NATS is up", func() (bool, string) {
		b := adminGet(admin, "/admin/usage?key=down")
		return strings.Contains(b, `"total_tokens":4`), b
	})
}

// adminGet returns the body of GET path from the admin listener at addr
// with the tests' admin token, or the error's text.
func adminGet(addr, path string) string {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer admin-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
