package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
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
