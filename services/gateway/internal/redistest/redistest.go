// Package redistest gives the gateway's tests a real Redis: a client for
// REDIS_URL (default redis://127.0.0.1:6379/15) and a key prefix of their
// own, deleted when the test ends.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// New returns a client for REDIS_URL and a prefix "llmproxy-test:<name>:<random>"
// unique to the test; every key under it is deleted at cleanup. Without
// Redis the test is skipped, or fails when CI=true.
func New(t testing.TB, name string) (*redis.Client, string) {
	t.Helper()
	url := os.Getenv("REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/15"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("REDIS_URL %q: %v", url, err)
	}
	rdb := redis.NewClient(opts)
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
	prefix := "llmproxy-test:" + name + ":" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		if names, _ := rdb.Keys(ctx, prefix+":*").Result(); len(names) > 0 {
			rdb.Del(ctx, names...)
		}
	})
	return rdb, prefix
}
