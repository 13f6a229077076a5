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
	"github.com/llmproxy/llmproxy/pkg/events"
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

// TestLogsTableHoldsOneLinePerRequest: what a client chose (its model, its
// key's name) cannot add a row to the table or drive the terminal: line
// breaks become spaces, escapes and direction overrides '?'.
func TestLogsTableHoldsOneLinePerRequest(t *testing.T) {
	var out strings.Builder
	printLogs(&out, []events.RequestCompleted{{
		RequestID: "req_1", KeyID: "kb", KeyName: "B\u202e",
		Model:      "x\n2026-11-27 12:00:00.000  req_FORGED_1  kb  gpt-4  200  1+1=2  1ms  \x1b[31mRED\x1b[0m",
		StatusCode: 404, Error: "model_not_found\r\nforged",
	}})
	got := out.String()
	if n := strings.Count(got, "\n"); n != 2 || strings.ContainsAny(got, "\x1b\r\u202e") {
		t.Fatalf("table (%d lines):\n%q\nwant a header and one row, no escape or override", n, got)
	}
}
