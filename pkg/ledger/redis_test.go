package ledger

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var redisProbe struct {
	once sync.Once
	url  string
	opts *redis.Options
	err  error
}

// testRedis returns a client for REDIS_URL (default
// redis://127.0.0.1:6379/15). Without a reachable Redis the test is skipped,
// or fails when CI=true. Redis is probed once per test binary.
func testRedis(tb testing.TB) *redis.Client {
	tb.Helper()
	p := &redisProbe
	p.once.Do(func() {
		p.url = os.Getenv("REDIS_URL")
		if p.url == "" {
			p.url = "redis://127.0.0.1:6379/15"
		}
		p.opts, p.err = redis.ParseURL(p.url)
		if p.err != nil {
			p.err = fmt.Errorf("REDIS_URL %q: %w", p.url, p.err)
			return
		}
		probe := redis.NewClient(&redis.Options{
			Addr: p.opts.Addr, Username: p.opts.Username, Password: p.opts.Password,
			DB: p.opts.DB, TLSConfig: p.opts.TLSConfig, MaxRetries: -1, DialTimeout: 2 * time.Second,
		})
		defer probe.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.err = probe.Ping(ctx).Err()
	})
	if p.err != nil {
		if p.opts == nil || os.Getenv("CI") == "true" {
			tb.Fatalf("redis at %s unreachable (CI=true requires it): %v", p.url, p.err)
		}
		tb.Skipf("redis at %s unreachable, skipping (set REDIS_URL or start redis): %v", p.url, p.err)
	}
	rdb := redis.NewClient(p.opts)
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// testPrefix returns a key prefix unique to this test and deletes every key
// under it when the test ends.
func testPrefix(tb testing.TB, rdb *redis.Client) string {
	tb.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, tb.Name())
	prefix := "llmproxy-test:" + name + ":" + hex.EncodeToString(b)
	tb.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 1000 {
				rdb.Unlink(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			rdb.Unlink(ctx, keys...)
		}
		if err := iter.Err(); err != nil {
			tb.Errorf("clean up %s: %v", prefix, err)
		}
	})
	return prefix
}

func newRedisStore(t *testing.T) DetailedStore {
	t.Helper()
	rdb := testRedis(t)
	return NewRedis(rdb, testPrefix(t, rdb))
}

func TestRedisStore(t *testing.T) {
	runStoreSuite(t, newRedisStore)
}

func TestRedisStoreLoadsUncachedScripts(t *testing.T) {
	ctx := context.Background()
	rdb := testRedis(t)
	s := NewRedis(rdb, testPrefix(t, rdb))
	// Scripts the server has never seen, without flushing the script cache
	// other users of this Redis rely on.
	nonce := "-- " + testPrefix(t, rdb) + "\n"
	s.apply = redis.NewScript(nonce + applyLua)
	s.addReserved = redis.NewScript(nonce + addReservedLua)
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	if err := s.AddReserved(ctx, "a", 5); err != nil {
		t.Fatalf("AddReserved with an uncached script: %v", err)
	}
	e := Entry{RequestID: "r1", KeyID: "a", UserID: "u", Time: at, PromptTokens: 1, Reserved: 2}
	if n, err := s.Apply(ctx, []Entry{e, e}); err != nil || n != 1 {
		t.Fatalf("Apply with uncached scripts = %d, %v; want 1", n, err)
	}
	if got, err := s.UsageByUser(ctx, "u", Daily, at); err != nil || got.Requests != 1 {
		t.Fatalf("UsageByUser = %+v, %v; want 1 request", got, err)
	}
	if got, err := s.Reserved(ctx, "a"); err != nil || got != 3 {
		t.Fatalf("Reserved = %d, %v; want 3", got, err)
	}
	// Now cached: the next batch goes through EVALSHA alone.
	if n, err := s.Apply(ctx, []Entry{e, {RequestID: "r2", KeyID: "a", Time: at}}); err != nil || n != 1 {
		t.Fatalf("second Apply = %d, %v; want 1", n, err)
	}
}

func TestRedisStoreKeyLayout(t *testing.T) {
	ctx := context.Background()
	rdb := testRedis(t)
	prefix := testPrefix(t, rdb)
	s := NewRedis(rdb, prefix, WithDedupeRetention(time.Hour))
	at := time.Date(2020, 1, 1, 12, 0, 0, 0, time.UTC) // long past: its seen sets expire from now
	if _, err := s.Apply(ctx, []Entry{{RequestID: "r1", KeyID: "k1", UserID: "u1", Time: at, PromptTokens: 1}}); err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(ctx, prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		rest := strings.TrimPrefix(k, prefix+":")
		if !strings.HasPrefix(rest, "{k1}:") && !strings.HasPrefix(rest, "{u:u1}:") && !strings.HasPrefix(rest, "keys:") {
			t.Errorf("key %s is outside the key's, the user's and the period sets' layout", k)
		}
	}
	// The seen sets outlive the later of the entry's day and now by the
	// retention.
	for _, seen := range []string{prefix + ":{k1}:seen:d2020-01-01", prefix + ":{u:u1}:seen:d2020-01-01"} {
		ttl, err := rdb.TTL(ctx, seen).Result()
		if err != nil || ttl <= 0 || ttl > time.Hour+time.Minute {
			t.Errorf("TTL of %s = %s, %v; want about the 1h retention", seen, ttl, err)
		}
		if ok, err := rdb.SIsMember(ctx, seen, "r1").Result(); err != nil || !ok {
			t.Errorf("SISMEMBER %s r1 = %v, %v; want true", seen, ok, err)
		}
	}
	future := time.Now().Add(72 * time.Hour)
	if _, err := s.Apply(ctx, []Entry{{RequestID: "r2", KeyID: "k1", Time: future, PromptTokens: 1}}); err != nil {
		t.Fatal(err)
	}
	seen := prefix + ":{k1}:seen:" + PeriodID(Daily, future)
	if ttl, err := rdb.TTL(ctx, seen).Result(); err != nil || ttl < 72*time.Hour || ttl > 98*time.Hour {
		t.Errorf("TTL of %s = %s, %v; want the day's end plus 1h", seen, ttl, err)
	}
}

// redisCPU returns the CPU time (user + system) the Redis server behind rdb
// has used since it started, from INFO cpu.
func redisCPU(ctx context.Context, rdb *redis.Client) (time.Duration, error) {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(info, "\n") {
		name, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "used_cpu_sys" && name != "used_cpu_user") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("INFO cpu %s: %w", name, err)
		}
		sum += f
	}
	return time.Duration(sum * float64(time.Second)), nil
}

// redisCPUMeter starts timing the Redis server's CPU; the function it
// returns reports that time per unit of work (n units since the start): what
// a Redis core pays for each admission or entry, and so how many one core
// can serve. It is the whole server's time, so other clients of the same
// Redis add to it.
func redisCPUMeter(b *testing.B, rdb *redis.Client, unit string) func(n int64) {
	ctx := context.Background()
	start, err := redisCPU(ctx, rdb)
	if err != nil {
		b.Logf("no Redis CPU figure: %v", err)
		return func(int64) {}
	}
	return func(n int64) {
		end, err := redisCPU(ctx, rdb)
		if err != nil || n <= 0 {
			return
		}
		b.ReportMetric(float64((end-start).Microseconds())/float64(n), "redis-µs/"+unit)
	}
}

// BenchmarkRedisApply measures entries applied per second from one process,
// in batches as the meter sends them: 50 keys, 20 users, one model. The
// parallel cases run 2×GOMAXPROCS Apply callers at once, as a meter with
// several workers does.
func BenchmarkRedisApply(b *testing.B) {
	for _, bc := range []struct {
		size     int
		parallel bool
	}{{100, false}, {1000, false}, {100, true}, {1000, true}} {
		name := fmt.Sprintf("batch=%d", bc.size)
		if bc.parallel {
			name += "/parallel"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			rdb := testRedis(b)
			s := NewRedis(rdb, testPrefix(b, rdb), WithDedupeRetention(10*time.Minute))
			at := time.Now()
			var seq, total atomic.Int64
			cpu := redisCPUMeter(b, rdb, "entry")
			apply := func(batch []Entry) error {
				for i := range batch {
					n := seq.Add(1)
					batch[i] = Entry{
						RequestID: "req-" + strconv.FormatInt(n, 10), KeyID: "key-" + strconv.FormatInt(n%50, 10),
						UserID: "user-" + strconv.FormatInt(n%20, 10), Model: "qwen2.5-72b", Time: at,
						PromptTokens: 100, CompletionTokens: 50, Reserved: 150,
					}
				}
				n, err := s.Apply(ctx, batch)
				total.Add(int64(n))
				return err
			}
			if bc.parallel {
				b.SetParallelism(2)
				b.RunParallel(func(pb *testing.PB) {
					batch := make([]Entry, bc.size)
					for pb.Next() {
						if err := apply(batch); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				batch := make([]Entry, bc.size)
				for b.Loop() {
					if err := apply(batch); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(total.Load())/b.Elapsed().Seconds(), "entries/s")
			cpu(seq.Load())
		})
	}
}
