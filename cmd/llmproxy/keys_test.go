package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/keys"
)

// testRedis connects to the test Redis (REDIS_URL, default
// redis://127.0.0.1:6379/15) and returns the client, the URL and a key
// prefix unique to the test ("llmproxy-test-<kind>-…"), whose keys are
// deleted when it ends. Without the test Redis the test is skipped, or
// fails when CI=true.
func testRedis(t *testing.T, kind string) (rdb *redis.Client, url, prefix string) {
	t.Helper()
	url = os.Getenv("REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/15"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("REDIS_URL %q: %v", url, err)
	}
	rdb = redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis at %s unreachable (CI=true requires it): %v", url, err)
		}
		t.Skipf("redis at %s unreachable, skipping: %v", url, err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	prefix = "llmproxy-test-" + kind + "-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		if names, _ := rdb.Keys(ctx, prefix+":*").Result(); len(names) > 0 {
			rdb.Del(ctx, names...)
		}
	})
	return rdb, url, prefix
}

// keysTestConfig writes a config whose key store is the test Redis under a
// prefix unique to the test, and returns its path and a client. Without Redis
// the test is skipped, or fails when CI=true.
func keysTestConfig(t *testing.T) (string, *redis.Client, string) {
	t.Helper()
	rdb, url, prefix := testRedis(t, "cli")
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	cfg := "backends:\n  - url: http://127.0.0.1:9\nauth:\n  storage: redis\nredis:\n  url: " + url + "\n  prefix: " + prefix + "\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, rdb, prefix
}

func runKeysCmd(t *testing.T, want int, args ...string) (string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := runKeys(args, &out, &errOut); code != want {
		t.Fatalf("keys %v = %d, want %d\nstdout: %s\nstderr: %s", args, code, want, out.String(), errOut.String())
	}
	return out.String(), errOut.String()
}

func TestKeysCommand(t *testing.T) {
	ctx := context.Background()
	cfg, rdb, prefix := keysTestConfig(t)

	out, errOut := runKeysCmd(t, 0, "create", "--config", cfg, "--id", "alice", "--name", "Alice", "--user", "u-alice",
		"--quota", "100000", "--period", "daily", "--allowed-ips", "10.0.0.0/8, 2001:db8::/32", "--models", "qwen",
		"--expires", "2027-01-01T00:00:00Z", "--rpm", "60", "--tpm", "0", "--max-concurrent", "3")
	secret := regexp.MustCompile(`sk-llmproxy-[0-9A-Za-z]{32}`).FindString(out)
	if secret == "" || !strings.Contains(errOut, "shown only once") {
		t.Fatalf("create printed %q / %q; want the secret and a warning", out, errOut)
	}
	rec, err := keys.LookupHash(ctx, rdb, prefix, keys.Hash(secret))
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != "alice" || rec.UserID != "u-alice" || *rec.TotalQuota != 100000 || rec.QuotaResetPeriod != "daily" ||
		len(rec.AllowedIPs) != 2 || rec.AllowedModels[0] != "qwen" || !rec.ExpiresAt.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) ||
		*rec.Limits.RequestsPerMinute != 60 || *rec.Limits.TokensPerMinute != 0 || *rec.Limits.MaxConcurrent != 3 ||
		rec.Limits.RequestsPerSecond != nil {
		t.Fatalf("stored record = %+v", rec)
	}

	out, _ = runKeysCmd(t, 0, "create", "--config", cfg, "--json")
	var created struct {
		Key    string      `json:"key"`
		Record keys.Record `json:"record"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Record.TotalQuota != nil || created.Record.Limits != nil {
		t.Fatalf("create --json = %s, %v; want a key with no overrides", out, err)
	}
	runKeysCmd(t, 1, "create", "--config", cfg, "--id", "alice") // taken
	for flagArg, want := range map[string]bool{"--capture-response": true, "--capture-response=false": false} {
		out, _ := runKeysCmd(t, 0, "create", "--config", cfg, flagArg)
		rec, err := keys.LookupHash(ctx, rdb, prefix, keys.Hash(regexp.MustCompile(`sk-llmproxy-[0-9A-Za-z]{32}`).FindString(out)))
		if err != nil || rec.CaptureResponse == nil || *rec.CaptureResponse != want {
			t.Fatalf("create %s stored %+v, %v; want capture_response %v", flagArg, rec, err, want)
		}
		runKeysCmd(t, 0, "delete", rec.ID, "--config", cfg)
	}
	out, _ = runKeysCmd(t, 0, "create", "--config", cfg, "--no-limits")
	if rec, err := keys.LookupHash(ctx, rdb, prefix, keys.Hash(regexp.MustCompile(`sk-llmproxy-[0-9A-Za-z]{32}`).FindString(out))); err != nil ||
		rec.Limits == nil || rec.Limits.Enabled == nil || *rec.Limits.Enabled {
		t.Fatalf("create --no-limits stored %+v, %v; want limits.enabled false", rec, err)
	} else {
		runKeysCmd(t, 0, "delete", rec.ID, "--config", cfg)
	}
	runKeysCmd(t, 2, "create", "--config", cfg, "--no-limits", "--rpm", "5")
	if _, errOut := runKeysCmd(t, 2, "create", "--config", cfg, "--rps", "1e-400"); !strings.Contains(errOut, "too small to hold") {
		t.Fatalf("create --rps 1e-400 said %q; want it refused as reading as 0", errOut)
	}
	runKeysCmd(t, 2, "create", "--config", cfg, "--period", "hourly")
	runKeysCmd(t, 2, "create", "--config", cfg, "--expires", "tomorrow")
	runKeysCmd(t, 2, "create", "--config", cfg, "--expires", "2020-01-01T00:00:00Z")
	runKeysCmd(t, 2, "create")

	out, _ = runKeysCmd(t, 0, "list", "--config", cfg)
	if !strings.Contains(out, "alice") || !strings.Contains(out, created.Record.ID) || strings.Contains(out, secret[12:]) {
		t.Fatalf("list = %s", out)
	}
	out, _ = runKeysCmd(t, 0, "list", "--config", cfg, "--json")
	var list struct{ Keys []keys.Record }
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Keys) != 2 {
		t.Fatalf("list --json = %s, %v", out, err)
	}

	runKeysCmd(t, 0, "disable", "alice", "--config", cfg)
	if r, _ := keys.Get(ctx, rdb, prefix, "alice"); r.Active() {
		t.Fatal("disable left the key active")
	}
	runKeysCmd(t, 0, "enable", "--config", cfg, "alice")
	if out, _ := runKeysCmd(t, 0, "show", "--config", cfg, "alice", "--json"); !strings.Contains(out, `"id": "alice"`) {
		t.Fatalf("show with flags after the id = %s", out)
	}
	out, _ = runKeysCmd(t, 0, "show", "alice", "--config", cfg)
	if !regexp.MustCompile(`(?m)^id: +alice$`).MatchString(out) || !regexp.MustCompile(`(?m)^status: +active$`).MatchString(out) ||
		strings.Contains(out, "{") || strings.Contains(out, secret) {
		t.Fatalf("show = %s; want a field a line, no JSON and no secret", out)
	}
	runKeysCmd(t, 0, "delete", "alice", "--config", cfg)
	runKeysCmd(t, 1, "show", "alice", "--config", cfg)
	runKeysCmd(t, 1, "delete", "alice", "--config", cfg)
	if _, errOut := runKeysCmd(t, 1, "create", "--config", cfg, "--id", "alice"); !strings.Contains(errOut, "deleted key") {
		t.Fatalf("create with a deleted key's id said %q; want it to say the id was a deleted key's", errOut)
	}
	runKeysCmd(t, 2, "show", "--config", cfg)
	runKeysCmd(t, 2, "rotate", "--config", cfg)
}

// TestKeysStatusText: `keys list` shows a key whose expires_at has passed,
// which every gateway refuses 403 key_expired, as expired, not active.
func TestKeysStatusText(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Second), now.Add(time.Hour)
	for _, tt := range []struct {
		rec  keys.Record
		want string
	}{
		{keys.Record{Spec: keys.Spec{Status: "active"}}, "active"},
		{keys.Record{Spec: keys.Spec{Status: "active", ExpiresAt: &future}}, "active"},
		{keys.Record{Spec: keys.Spec{Status: "active", ExpiresAt: &past}}, "expired"},
		{keys.Record{Spec: keys.Spec{Status: "active", ExpiresAt: &now}}, "expired"},
		{keys.Record{Spec: keys.Spec{Status: "disabled", ExpiresAt: &past}}, "disabled"},
	} {
		if got := statusText(tt.rec, now); got != tt.want {
			t.Errorf("statusText(%+v) = %s, want %s", tt.rec.Spec, got, tt.want)
		}
	}
}

// TestKeysUpdateCommand: `keys update` changes only the fields given, puts
// one back to the defaults with "default" (or an empty list), and keeps
// the secret; a change that would be refused at create is refused.
func TestKeysUpdateCommand(t *testing.T) {
	ctx := context.Background()
	cfg, rdb, prefix := keysTestConfig(t)
	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{ID: "team", Name: "Team", TotalQuota: ptrTo(int64(100)), QuotaResetPeriod: "daily",
		AllowedModels: []string{"qwen"}, Limits: &keys.Limits{RequestsPerMinute: ptrTo(int64(60))}})
	if err != nil {
		t.Fatal(err)
	}
	runKeysCmd(t, 0, "update", "team", "--config", cfg, "--quota", "5000", "--models", "", "--rpm", "default", "--max-concurrent", "4", "--expires", "2099-01-01T00:00:00Z")
	rec, err := keys.LookupHash(ctx, rdb, prefix, keys.Hash(secret))
	if err != nil {
		t.Fatal(err)
	}
	if *rec.TotalQuota != 5000 || rec.AllowedModels != nil || rec.Limits.RequestsPerMinute != nil || *rec.Limits.MaxConcurrent != 4 ||
		rec.QuotaResetPeriod != "daily" || rec.Name != "Team" || rec.ExpiresAt == nil {
		t.Fatalf("after update: %+v (limits %+v)", rec, rec.Limits)
	}
	runKeysCmd(t, 0, "update", "--config", cfg, "team", "--no-limits", "--expires", "never", "--quota", "default")
	if rec, _ = keys.Get(ctx, rdb, prefix, "team"); rec.Limits == nil || rec.Limits.Enabled == nil || *rec.Limits.Enabled || rec.Limits.MaxConcurrent != nil || rec.ExpiresAt != nil || rec.TotalQuota != nil {
		t.Fatalf("after --no-limits --expires never --quota default: %+v (limits %+v)", rec, rec.Limits)
	}
	runKeysCmd(t, 0, "update", "team", "--config", cfg, "--default-limits")
	if rec, _ = keys.Get(ctx, rdb, prefix, "team"); rec.Limits != nil {
		t.Fatalf("after --default-limits: limits %+v", rec.Limits)
	}
	runKeysCmd(t, 2, "update", "team", "--config", cfg)
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--default-limits=false") // nothing to change
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--quota", "-1")
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--quota", "lots")
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--period", "hourly")
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--no-limits", "--rpm", "5")
	// An empty entry is a mistake, not "no restriction".
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--models", ",")
	runKeysCmd(t, 2, "update", "team", "--config", cfg, "--allowed-ips", "10.0.0.0/8,,")
	runKeysCmd(t, 2, "create", "--config", cfg, "--models", "a,,b")
	// A limit given to a key freed of limits limits it, in one command.
	runKeysCmd(t, 0, "update", "team", "--config", cfg, "--no-limits")
	runKeysCmd(t, 0, "update", "team", "--config", cfg, "--rpm", "10")
	if rec, _ = keys.Get(ctx, rdb, prefix, "team"); rec.Limits == nil || rec.Limits.Enabled != nil || *rec.Limits.RequestsPerMinute != 10 {
		t.Fatalf("after --no-limits then --rpm 10: limits %+v", rec.Limits)
	}
	runKeysCmd(t, 1, "update", "nobody", "--config", cfg, "--quota", "5")
}

func ptrTo[T any](v T) *T { return &v }

// TestCommandsNameWhatDidNotAnswer: a keys command whose Redis takes the
// connection and never answers, and a logs command whose NATS refuses it,
// say which server: "list keys: i/o timeout" and "no servers available for
// connection" named none.
func TestCommandsNameWhatDidNotAnswer(t *testing.T) {
	silent := silentListener(t)
	refused := freeAddr(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	yaml := fmt.Sprintf("backends: [{url: \"http://127.0.0.1:9\"}]\nauth: {storage: redis}\nredis: {url: \"redis://%s/0\"}\nnats: {url: \"nats://%s\"}\n", silent.Addr(), refused)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := runKeys([]string{"list", "--config", path}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "Redis at "+silent.Addr().String()) {
		t.Errorf("keys list against a silent Redis: exit %d, %q", code, errOut.String())
	}
	out.Reset()
	errOut.Reset()
	if code := runLogs([]string{"--config", path, "--from", "stream"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), refused) || !strings.Contains(errOut.String(), "refused") {
		t.Errorf("logs against a NATS that refuses: exit %d, %q", code, errOut.String())
	}
}
