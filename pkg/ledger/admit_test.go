package ledger

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Set moves the clock to t.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func newLocalAdmitEnv(t *testing.T, start time.Time) admitEnv {
	t.Helper()
	clock := &fakeClock{t: start}
	s, err := OpenLocal(filepath.Join(t.TempDir(), "ledger.db"), WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return admitEnv{admit: NewLocalAdmitter(s, clock.Now), store: s, clock: clock}
}

// newRedisAdmitEnv returns an environment on the test Redis whose scripts
// decide by the fake clock instead of the server's TIME. split makes the
// admitter decide as it does on Redis Cluster.
func newRedisAdmitEnv(split bool) func(t *testing.T, start time.Time) admitEnv {
	return func(t *testing.T, start time.Time) admitEnv {
		t.Helper()
		rdb := testRedis(t)
		prefix := testPrefix(t, rdb)
		clock := &fakeClock{t: start}
		a := NewRedisAdmitter(rdb, prefix)
		a.now, a.split = clock.Now, split
		return admitEnv{admit: a, store: NewRedis(rdb, prefix), clock: clock}
	}
}

func TestLocalAdmitter(t *testing.T) { runAdmitSuite(t, newLocalAdmitEnv) }

func TestRedisAdmitter(t *testing.T) { runAdmitSuite(t, newRedisAdmitEnv(false)) }

// TestRedisAdmitterSplit runs the suite the way the admitter decides on Redis
// Cluster: the key's script and the global script in one pipeline, undoing
// the half that admitted when the other rejected.
func TestRedisAdmitterSplit(t *testing.T) { runAdmitSuite(t, newRedisAdmitEnv(true)) }

// TestRedisAdmitterServerClock decides by the server's TIME, as in
// production.
func TestRedisAdmitterServerClock(t *testing.T) {
	ctx := context.Background()
	rdb := testRedis(t)
	prefix := testPrefix(t, rdb)
	a := NewRedisAdmitter(rdb, prefix)
	req := AdmitRequest{KeyID: "k", Limits: KeyLimits{RPM: 5, MaxConcurrent: 10, TPM: 1000}, Quota: 10000, Period: Daily, Reserve: 100}
	for i := range 6 {
		req.LeaseID = fmt.Sprintf("r%d", i)
		d, err := a.Admit(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if want := i < 5; d.Allowed != want {
			t.Fatalf("request %d: %+v; want allowed=%v", i, d, want)
		}
		if i == 5 && (d.Reason != ReasonKeyRPM || d.RetryAfter <= 0 || d.RetryAfter > time.Minute) {
			t.Fatalf("6th: %+v; want key_rpm retrying within a minute", d)
		}
	}
	// The keys a decision writes all carry the key's hash tag.
	keys, err := rdb.Keys(ctx, prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k[:len(prefix)+4] != prefix+":{k}" {
			t.Errorf("key %s is outside the key's hash slot", k)
		}
	}
	if len(keys) != 5 { // rpm, leases, resv, resvexp, resvsum
		t.Errorf("keys after admission = %v, want rpm, leases, resv, resvexp and resvsum", keys)
	}
}

// TestMemoryAdmitterSettle: in rate_limit.storage: memory the gateway settles
// its own requests.
func TestMemoryAdmitterSettle(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	a := NewMemoryAdmitter(nil, clock.Now)
	req := AdmitRequest{KeyID: "k", LeaseID: "r1", Limits: KeyLimits{TPM: 1000}, Reserve: 900}
	if d, _ := a.Admit(ctx, req); !d.Allowed {
		t.Fatalf("first: %+v", d)
	}
	req.LeaseID = "r2"
	if d, _ := a.Admit(ctx, req); d.Allowed {
		t.Fatalf("second while 900 reserved: %+v; want rejected", d)
	}
	if !a.Settle("k", "r1", 50, clock.Now()) {
		t.Fatal("Settle found no reservation for r1")
	}
	if d, _ := a.Admit(ctx, req); !d.Allowed {
		t.Fatalf("after settling 50: %+v; want admitted", d)
	}
}

// BenchmarkAdmit measures one admission and its release per operation, with
// every limit enabled, 50 keys and 8 callers per CPU.
func BenchmarkAdmit(b *testing.B) {
	req := AdmitRequest{
		Global: GlobalLimit{RPS: 1e9, Burst: 1 << 30},
		Limits: KeyLimits{RPS: 1e9, RPM: 1 << 40, TPM: 1 << 50, MaxConcurrent: 1 << 30},
		Quota:  1 << 50, Period: Monthly, Reserve: 500,
	}
	// new returns the admitter and, for a Redis one, its client, whose
	// server's CPU per admission is reported too.
	for _, bc := range []struct {
		name string
		new  func(b *testing.B) (Admitter, *redis.Client)
	}{
		{"local", func(b *testing.B) (Admitter, *redis.Client) {
			s, err := OpenLocal(filepath.Join(b.TempDir(), "ledger.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return NewLocalAdmitter(s, nil), nil
		}},
		{"redis", func(b *testing.B) (Admitter, *redis.Client) {
			rdb := testRedis(b)
			return NewRedisAdmitter(rdb, testPrefix(b, rdb)), rdb
		}},
		// redis-window: each key's TPM window holds a second of applied
		// tokens for each of the last 59 s, as under steady traffic.
		{"redis-window", func(b *testing.B) (Admitter, *redis.Client) {
			rdb := testRedis(b)
			prefix := testPrefix(b, rdb)
			store, now := NewRedis(rdb, prefix), time.Now()
			var entries []Entry
			for k := range 50 {
				for s := range 59 {
					entries = append(entries, Entry{RequestID: fmt.Sprintf("w-%d-%d", k, s), KeyID: "key-" + strconv.Itoa(k),
						Time: now.Add(-time.Duration(s) * time.Second), PromptTokens: 10})
				}
			}
			if _, err := store.Apply(context.Background(), entries); err != nil {
				b.Fatal(err)
			}
			return NewRedisAdmitter(rdb, prefix), rdb
		}},
	} {
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			ctx := context.Background()
			a, rdb := bc.new(b)
			cpu := func(int64) {}
			if rdb != nil {
				cpu = redisCPUMeter(b, rdb, "admit")
			}
			var seq atomic.Int64
			b.SetParallelism(8) // gateways wait on Redis, not on CPU
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := seq.Add(1)
					r := req
					r.KeyID = "key-" + strconv.FormatInt(n%50, 10)
					r.LeaseID = "req-" + strconv.FormatInt(n, 10)
					d, err := a.Admit(ctx, r)
					if err != nil || !d.Allowed {
						b.Errorf("Admit = %+v, %v", d, err)
						return
					}
					if err := a.Release(ctx, r.KeyID, r.LeaseID); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(seq.Load())/b.Elapsed().Seconds(), "admits/s")
			cpu(seq.Load())
		})
	}
}

// TestRedisAdmitterAcrossClients: two gateways, each with its own client,
// share the limits exactly.
func TestRedisAdmitterAcrossClients(t *testing.T) {
	ctx := context.Background()
	rdb1 := testRedis(t)
	prefix := testPrefix(t, rdb1)
	rdb2 := testRedis(t)
	gateways := []*RedisAdmitter{NewRedisAdmitter(rdb1, prefix), NewRedisAdmitter(rdb2, prefix)}
	req := AdmitRequest{KeyID: "k", Limits: KeyLimits{MaxConcurrent: 5, RPM: 600}, LeaseTTL: time.Minute}
	var allowed atomic.Int64
	done := make(chan struct{})
	for i := range 50 {
		go func() {
			defer func() { done <- struct{}{} }()
			r := req
			r.LeaseID = fmt.Sprintf("r%d", i)
			d, err := gateways[i%2].Admit(ctx, r)
			if err != nil {
				t.Error(err)
			}
			if d.Allowed {
				allowed.Add(1)
			}
		}()
	}
	for range 50 {
		<-done
	}
	if n := allowed.Load(); n != 5 {
		t.Fatalf("two gateways admitted %d of 50 concurrent requests, want 5", n)
	}
}

// TestRedisTPMSumFollowsApply: once the admitter keeps the window's sum,
// Apply adds to it, including a late entry older than the window's oldest
// second, and the sum drops seconds as they leave the window.
func TestRedisTPMSumFollowsApply(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	env := newRedisAdmitEnv(false)(t, t0)
	apply := func(id string, at time.Time, tokens int64) {
		t.Helper()
		if _, err := env.store.Apply(ctx, []Entry{{RequestID: id, KeyID: "k", Time: at, PromptTokens: tokens}}); err != nil {
			t.Fatal(err)
		}
	}
	remaining := func(want int64) {
		t.Helper()
		d, err := env.admit.Admit(ctx, AdmitRequest{KeyID: "k", LeaseID: "probe", Limits: KeyLimits{TPM: 1000}})
		if err != nil || !d.Allowed || d.RemainingTokens != want {
			t.Fatalf("at %s: %+v, %v; want admitted with %d tokens remaining", env.clock.Now().Format(time.TimeOnly), d, err, want)
		}
	}
	apply("a", t0.Add(10*time.Second), 100)
	env.clock.Set(t0.Add(20 * time.Second))
	remaining(900) // builds the sum
	apply("b", t0.Add(20*time.Second), 50)
	apply("c", t0.Add(5*time.Second), 30) // late, older than the oldest second
	remaining(820)
	env.clock.Set(t0.Add(65 * time.Second)) // c leaves
	remaining(850)
	env.clock.Set(t0.Add(70 * time.Second)) // a leaves
	remaining(950)
	env.clock.Set(t0.Add(80 * time.Second)) // b leaves
	remaining(1000)
}

// TestLocalAdmitterCachesUsage: the single binary's admitter reads a key's
// quota usage from the store once, not on every admission (a read
// transaction costs 11 allocations), and the cache follows the store: a
// batch applied in between, and the next period, are both seen.
func TestLocalAdmitterCachesUsage(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 1, 31, 23, 59, 0, 0, time.UTC)
	env := newLocalAdmitEnv(t, start)
	a := env.admit.(*MemoryAdmitter)
	req := AdmitRequest{KeyID: "k", Quota: 100, Period: Monthly, Reserve: 1}
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		i++
		r := req
		r.LeaseID = "probe-" + strconv.Itoa(i)
		if d, err := a.Admit(ctx, r); err != nil || !d.Allowed {
			t.Fatalf("Admit = %+v, %v", d, err)
		}
		_ = a.Release(ctx, r.KeyID, r.LeaseID)
		a.Settle(r.KeyID, r.LeaseID, 0, start)
	})
	if allocs > 5 {
		t.Errorf("an admission with quota makes %.0f allocations; reading the store each time makes 14", allocs)
	}

	// 90 of the 100 tokens applied: an admission asking for 20 no longer fits.
	if _, err := env.store.Apply(ctx, []Entry{{RequestID: "used", KeyID: "k", Time: start, PromptTokens: 90}}); err != nil {
		t.Fatal(err)
	}
	r := req
	r.LeaseID, r.Reserve = "big", 20
	if d, err := a.Admit(ctx, r); err != nil || d.Allowed || d.Reason != ReasonQuota {
		t.Fatalf("after 90 of 100 tokens, Admit(20) = %+v, %v; want a quota rejection", d, err)
	}
	// A minute later it is February: January's usage no longer counts.
	env.clock.Set(start.Add(time.Minute))
	if d, err := a.Admit(ctx, r); err != nil || !d.Allowed {
		t.Fatalf("in the next period, Admit(20) = %+v, %v; want it allowed", d, err)
	}
}

// TestAdmitOutlivesItsCaller: a decision is made whole even when the
// caller's context ends while it is on its way (a client that left), on a
// single node and on Redis Cluster's split path alike. The split path
// stopped with the caller: the request got an error, and the admission,
// which may have run, had to be cancelled by another round trip.
func TestAdmitOutlivesItsCaller(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprintf("split=%v", split), func(t *testing.T) {
			env := newRedisAdmitEnv(split)(t, time.Unix(1_700_000_000, 0))
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			d, err := env.admit.Admit(ctx, AdmitRequest{KeyID: "k", LeaseID: "r1", Global: GlobalLimit{RPS: 100, Burst: 10},
				Limits: KeyLimits{MaxConcurrent: 1}})
			if err != nil {
				t.Fatalf("Admit with the caller gone: %v", err)
			}
			if !d.Allowed {
				t.Fatalf("Admit with the caller gone: %+v; want allowed", d)
			}
		})
	}
}
