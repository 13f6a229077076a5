package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// TestUsagePeriodsOfRedisKeys: usage of keys in the Redis key store is
// reported over each key's own quota period, and over
// auth.defaults.quota_reset_period for a key that sets none or is gone.
func TestUsagePeriodsOfRedisKeys(t *testing.T) {
	ctx := context.Background()
	path, rdb, prefix := keysTestConfig(t)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	withDefault := strings.Replace(string(data), "  storage: redis\n", "  storage: redis\n  defaults: {quota_reset_period: weekly}\n", 1)
	if err := os.WriteFile(path, []byte(withDefault), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{ID: "daily-key", QuotaResetPeriod: "daily"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{ID: "plain-key"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var entries []ledger.Entry
	for i, id := range []string{"daily-key", "plain-key", "gone-key"} {
		entries = append(entries, ledger.Entry{RequestID: "r" + id, KeyID: id, Time: now, PromptTokens: int64(i + 1), CompletionTokens: 1})
	}
	if _, err := ledger.NewRedis(rdb, prefix).Apply(ctx, entries); err != nil {
		t.Fatal(err)
	}

	rows, err := readUsage(ctx, cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]ledger.Period{"daily-key": ledger.Daily, "plain-key": ledger.Weekly, "gone-key": ledger.Weekly}
	if len(rows) != len(want) {
		t.Fatalf("rows %+v, want one per key of %v", rows, want)
	}
	for _, r := range rows {
		if r.Period != want[r.KeyID] || r.PeriodID != ledger.PeriodID(want[r.KeyID], now) {
			t.Errorf("%s: period %s (%s), want %s", r.KeyID, r.Period, r.PeriodID, want[r.KeyID])
		}
	}
	rows, err = readUsage(ctx, cfg, "daily-key", "")
	if err != nil || len(rows) != 1 || rows[0].Period != ledger.Daily || rows[0].TotalTokens != 2 {
		t.Fatalf("--key daily-key: %+v, %v; want one daily row of 2 tokens", rows, err)
	}
	// A key id no key has, and nothing was recorded under, is an error,
	// not a row of zeros (a mistyped id); a gone key's usage is reported.
	if rows, err = readUsage(ctx, cfg, "no-such-key", ""); !errors.Is(err, ledger.ErrUnknownKey) {
		t.Fatalf("--key no-such-key: %+v, %v; want ErrUnknownKey", rows, err)
	}
	// An id no key could have (a user's row of the ledger) is refused.
	if code := cmdUsage([]string{"--config", path, "--key", "u:someone"}); code != 2 {
		t.Fatalf("usage --key u:someone exited %d, want 2", code)
	}
	rows, err = readUsage(ctx, cfg, "gone-key", "")
	if err != nil || len(rows) != 1 || rows[0].Period != ledger.Weekly || rows[0].TotalTokens != 4 {
		t.Fatalf("--key gone-key: %+v, %v; want one weekly row of 4 tokens", rows, err)
	}
}

// TestPeriodOfFileKeys: a file key's own period, else the configured
// default, also for a key no longer in the file.
func TestPeriodOfFileKeys(t *testing.T) {
	cfg, err := config.Parse([]byte(`
backends: [{url: "http://127.0.0.1:9"}]
auth: {defaults: {quota_reset_period: daily}}
api_keys:
  - {key: sk-a, id: a, quota_reset_period: never}
  - {key: sk-b, id: b}
`), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kp := periodOf(cfg, nil)
	got, err := kp.Of(context.Background(), []string{"a", "b", "gone"})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]ledger.Period{"a": ledger.Never, "b": ledger.Daily} {
		if got[id] != want {
			t.Errorf("period of %s = %s, want %s", id, got[id], want)
		}
	}
	if p, ok := got["gone"]; ok || kp.Default != ledger.Daily {
		t.Errorf("a key not in the file: %q, %v, default %s; want unknown, and the default daily", p, ok, kp.Default)
	}
}

// TestUsageFromAdminSaysWhy: when the running server refuses the
// command's request, the error gives the server's reason, not only its
// status.
func TestUsageFromAdminSaysWhy(t *testing.T) {
	srv := httptest.NewServer(gateway.AdminHandler(gateway.AdminOptions{Token: "server-token"}))
	defer srv.Close()
	cfg := &config.Config{}
	cfg.Admin.Listen = strings.TrimPrefix(srv.URL, "http://")
	cfg.Admin.Token = "another-token"
	_, err := usageFromAdmin(context.Background(), cfg, "", "")
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "admin token required") ||
		!strings.Contains(err.Error(), "a changed admin.token takes a restart") {
		t.Fatalf("wrong token: %v, want the 401, the server's reason and the hint", err)
	}
	cfg.Admin.Token = "server-token" // a process without a ledger
	_, err = usageFromAdmin(context.Background(), cfg, "", "")
	if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "no ledger") {
		t.Fatalf("no ledger: %v, want the 404 and the server's reason", err)
	}
}
