package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"
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
	serveAll(t, path, yaml)
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
