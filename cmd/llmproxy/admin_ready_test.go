package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestAdminReadyzSeesBackends: with every backend down, the admin
// listener's /readyz refuses as the gateway's own does.
func TestAdminReadyzSeesBackends(t *testing.T) {
	dir := t.TempDir()
	listen, admin, dead := freeAddr(t), freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf(`listen: %q
data_dir: %q
admin: { listen: %q, token: admin-token-0123456789 }
backends:
  - url: "http://%s"
health_check: { path: /health, interval: 200ms, timeout: 100ms, failure_threshold: 1 }
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), admin, dead)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, path, "all", slog.New(slog.DiscardHandler)) }()
	defer func() {
		stop()
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	}()
	status := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 20*time.Second, "the gateway's /readyz refusing", func() (bool, string) {
		code, body := status("http://" + listen + "/readyz")
		return code == http.StatusServiceUnavailable, body
	})
	if code, body := status("http://" + admin + "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("admin /readyz = %d %q with every backend down, want 503", code, body)
	}
}
