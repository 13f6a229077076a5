package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// TestReloadNamesRestartOnlyKeys: a SIGHUP whose file changes what a
// reload does not apply (here listen and a webhook's url) reloads the rest
// and warns, naming those keys; one that changes only what reloads (a key,
// a limit) does not warn. admin.listen given by --admin-listen is not a
// change.
func TestReloadNamesRestartOnlyKeys(t *testing.T) {
	const base = `listen: "127.0.0.1:18000"
admin: { listen: "127.0.0.1:18001", token: t }
backends: [{ url: "http://127.0.0.1:9" }]
webhooks: [{ name: audit, url: "https://audit.internal/a" }]
api_keys: [{ key: sk-one, id: one }]
`
	cases := []struct {
		name string
		file string
		want []string // keys named in the warning; nil: no warning
	}{
		{"only reloadable keys changed", strings.Replace(base, "sk-one, id: one }]", "sk-two, id: two }]\nrate_limit: { per_key: { max_concurrent: 2 } }", 1), nil},
		{"listen and a webhook changed", strings.NewReplacer(`127.0.0.1:18000`, `127.0.0.1:18002`, `audit.internal/a`, `audit.internal/b`).Replace(base), []string{"listen", "webhooks"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "llmproxy.yaml")
			if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
				t.Fatal(err)
			}
			running, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			running.Admin.Listen = "127.0.0.1:19999" // as --admin-listen does
			gw, err := gateway.New(gateway.Options{Config: running, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(c.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var logBuf syncBuffer
			reload(context.Background(), path, "127.0.0.1:19999", running, gw, slog.New(slog.NewJSONHandler(&logBuf, nil)))

			var warned []string
			for _, line := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
				var rec struct {
					Level string   `json:"level"`
					Msg   string   `json:"msg"`
					Keys  []string `json:"keys"`
				}
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Level != "INFO" {
					if !strings.Contains(rec.Msg, "not reloaded") {
						t.Fatalf("unexpected log line: %s", line)
					}
					warned = rec.Keys
				}
			}
			if !slices.Equal(warned, c.want) {
				t.Errorf("warned of %v, want %v\nlog:\n%s", warned, c.want, logBuf.String())
			}
		})
	}
}
