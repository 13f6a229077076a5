package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// TestRedisLogger: go-redis's messages become warnings in the JSON log, at
// most one per interval, the next one counting those left out.
func TestRedisLogger(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1_700_000_000, 0)
	l := newRedisLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	l.now = func() time.Time { return now }
	ctx := context.Background()
	const dial = "redis: connection pool: failed to dial after %d attempts: %s"
	for range 3 {
		l.Printf(ctx, dial, 5, "connect: connection refused")
		now = now.Add(100 * time.Millisecond)
	}
	now = now.Add(time.Second)
	l.Printf(ctx, dial, 5, "connect: connection refused")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (one per second):\n%s", len(lines), buf.String())
	}
	for i, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, line)
		}
		if rec["level"] != "WARN" || rec["component"] != "redis" ||
			rec["msg"] != "connection pool: failed to dial after 5 attempts: connect: connection refused" {
			t.Fatalf("line %d = %v", i, rec)
		}
		if want := []any{nil, 2.0}[i]; rec["suppressed"] != want {
			t.Fatalf("line %d: suppressed = %v, want %v", i, rec["suppressed"], want)
		}
	}

	// What go-redis handles itself (a stale pooled connection retired, its
	// command sent on another) is not a warning.
	buf.Reset()
	now = now.Add(time.Minute)
	l.Printf(ctx, "push: pre-command drain failed, retiring conn: %v", "EOF")
	if strings.Contains(buf.String(), "WARN") || buf.Len() != 0 {
		t.Fatalf("a routine message logged at the default level: %s", buf.String())
	}

	// A Sentinel setup doing its work (a master named, a failover
	// followed) is news, not trouble; a sentinel that fails is trouble.
	buf.Reset()
	l.Printf(ctx, "sentinel: selected addr=%s masterAddr=%s", "127.0.0.1:26379", "127.0.0.1:6380")
	l.Printf(ctx, "sentinel: new master=%q addr=%q", "mymaster", "127.0.0.1:6381")
	if got := buf.String(); strings.Count(got, `"level":"INFO"`) != 2 || strings.Contains(got, "WARN") {
		t.Fatalf("Sentinel's routine logged as %s", got)
	}
	buf.Reset()
	now = now.Add(time.Minute)
	l.Printf(ctx, "sentinel: GetMasterAddrByName name=%q failed: %s", "mymaster", "i/o timeout")
	if !strings.Contains(buf.String(), `"level":"WARN"`) {
		t.Fatalf("a sentinel's failure logged as %s", buf.String())
	}
}

// TestDedupeRetention: the ledger remembers request ids for longer than the
// stream keeps events, however long that is.
func TestDedupeRetention(t *testing.T) {
	for _, tc := range []struct{ maxAge, want time.Duration }{
		{0, ledger.DefaultDedupeRetention},
		{168 * time.Hour, ledger.DefaultDedupeRetention},
		{90 * 24 * time.Hour, 91 * 24 * time.Hour},
	} {
		var cfg config.Config
		cfg.NATS.Stream.MaxAge = config.Duration(tc.maxAge)
		if got := dedupeRetention(&cfg); got != tc.want {
			t.Errorf("max_age %v: dedupe retention %v, want %v", tc.maxAge, got, tc.want)
		}
	}
}

// TestFollowUpMetrics: a Redis admitter's follow-ups are on /metrics; an
// admitter without any adds nothing.
func TestFollowUpMetrics(t *testing.T) {
	names := func(a ledger.Admitter) []string {
		reg := prometheus.NewRegistry()
		registerFollowUps(reg, a)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, mf := range mfs {
			out = append(out, mf.GetName())
		}
		return out
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	got := names(ledger.NewRedisAdmitter(rdb, "followups"))
	want := []string{"llmproxy_admission_followups_dropped_total", "llmproxy_admission_followups_unconfirmed_total", "llmproxy_admission_followups_waiting"}
	if !slices.Equal(got, want) {
		t.Fatalf("Redis admitter: metrics %v, want %v", got, want)
	}
	if got := names(ledger.NewMemoryAdmitter(nil, nil)); len(got) != 0 {
		t.Fatalf("memory admitter: metrics %v, want none", got)
	}
}

// TestWriteReadyTellsARedisThatRefusesWrites: a process that writes to
// Redis is not ready on a Redis that answers its PING but refuses its
// scripts (an ACL user without EVALSHA) or its writes (a read-only user);
// it is on one that takes them. It runs a redis-server of its own, with
// those users.
func TestWriteReadyTellsARedisThatRefusesWrites(t *testing.T) {
	addr := runRedisServer(t, func(port int) []string {
		return []string{"--port", fmt.Sprint(port), "--user", "default", "off",
			"--user", "full", "on", ">pw", "~*", "&*", "+@all",
			"--user", "noscript", "on", ">pw", "~*", "&*", "+@all", "-evalsha", "-eval",
			"--user", "readonly", "on", ">pw", "~*", "&*", "+@read", "+@connection", "+evalsha", "+eval"}
	})
	for user, ok := range map[string]bool{"full": true, "noscript": false, "readonly": false} {
		rdb, err := openRedis(&config.Config{Redis: config.Redis{URL: "redis://" + addr, Username: user, Password: "pw"}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatalf("%s: PING: %v", user, err)
		}
		err = writeReady(rdb, "llmproxy")(ctx)
		cancel()
		rdb.Close()
		if (err == nil) != ok || err != nil && !strings.Contains(err.Error(), "refuses this process's scripts or writes") {
			t.Errorf("%s: writeReady = %v, want ok %v", user, err, ok)
		}
	}
}

// TestConnectedReplicas: the count serve compares with redis.wait_replicas
// is the one Redis reports (the test Redis, a master of none).
func TestConnectedReplicas(t *testing.T) {
	rdb, _, _ := testRedis(t, "replicas")
	info, err := rdb.Info(context.Background(), "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	n, err := connectedReplicas(context.Background(), rdb)
	if err != nil || !strings.Contains(info, fmt.Sprintf("connected_slaves:%d", n)) {
		t.Fatalf("connectedReplicas = %d, %v; INFO replication:\n%s", n, err, info)
	}
}
