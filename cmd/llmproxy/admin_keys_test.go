package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAdminKeysFollowAuthStorage: with Redis configured (for the ledger and
// limits) but auth.storage: file, the gateway takes its keys from the file
// and would accept none the admin API made, so POST /admin/keys is refused
// with key_store_not_configured and nothing is stored. After a reload to
// auth.storage: redis the same listener makes keys.
func TestAdminKeysFollowAuthStorage(t *testing.T) {
	rdb, url, prefix := testRedis(t, "admin-keys")
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	head := fmt.Sprintf("listen: %q\ndata_dir: %q\nadmin: { listen: %q, token: admin-token-0123456789 }\n"+
		"redis: { url: %q, prefix: %q }\nbackends: [{url: \"http://127.0.0.1:9\"}]\n",
		listen, filepath.Join(dir, "data"), admin, url, prefix)
	if err := os.WriteFile(path, []byte(head+"auth: { storage: file }\napi_keys: [{ key: sk-one, id: one }]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logBuf := serveFile(t, path)
	create := func() (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/admin/keys", strings.NewReader(`{"name":"Team B"}`))
		req.Header.Set("Authorization", "Bearer admin-token-0123456789")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var code int
	var body string
	eventually(t, 30*time.Second, "the admin listener", func() (bool, string) {
		code, body = create()
		return code != 0, body
	})
	if code != http.StatusNotFound || !strings.Contains(body, `"code":"key_store_not_configured"`) || !strings.Contains(body, "auth.storage is file") {
		t.Fatalf("POST /admin/keys with auth.storage: file = %d %s; want 404 key_store_not_configured naming auth.storage", code, body)
	}
	if names, err := rdb.Keys(context.Background(), prefix+":keys:*").Result(); err != nil || len(names) > 0 {
		t.Fatalf("Redis holds %v (%v) after the refused create; want no key", names, err)
	}

	if err := os.WriteFile(path, []byte(head+"auth: { storage: redis }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the reload", func() (bool, string) {
		return strings.Contains(logBuf.String(), "configuration reloaded"), logBuf.String()
	})
	if code, body := create(); code != http.StatusCreated {
		t.Fatalf("POST /admin/keys after the reload to auth.storage: redis = %d %s; want 201", code, body)
	}
}
