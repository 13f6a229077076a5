package main

import (
	"bytes"
	"context"
	"encoding/json"
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
	want := []string{"llmproxy_admission_followups_dropped_total", "llmproxy_admission_followups_waiting"}
	if !slices.Equal(got, want) {
		t.Fatalf("Redis admitter: metrics %v, want %v", got, want)
	}
	if got := names(ledger.NewMemoryAdmitter(nil, nil)); len(got) != 0 {
		t.Fatalf("memory admitter: metrics %v, want none", got)
	}
}
