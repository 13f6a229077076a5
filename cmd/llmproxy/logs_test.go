package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestLogsRequestIDNotFound: a request asked for by id and not found
// exits 1, with --json as without.
func TestLogsRequestIDNotFound(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)
	cfg := &config.Config{}
	cfg.NATS.URL = ns.ClientURL()
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	b.close()
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	conf := fmt.Sprintf("nats: {url: %q}\nbackends: [{url: http://127.0.0.1:9}]\n", ns.ClientURL())
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"text", []string{"--config", path, "--request-id", "nope"}},
		{"json", []string{"--config", path, "--request-id", "nope", "--json"}},
		{"client id json", []string{"--config", path, "--client-request-id", "nope", "--json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(runLogs, tc.args...)
			if code != 1 || out != "" || !strings.Contains(errOut, "nope not found") {
				t.Fatalf("logs = %d, stdout %q, stderr %q; want 1, nothing, not found", code, out, errOut)
			}
		})
	}
}
