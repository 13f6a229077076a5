package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
)

// countGets counts the GET commands a client sends.
type countGets struct{ n atomic.Int64 }

func (c *countGets) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countGets) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (c *countGets) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "get" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func TestRedisStore(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := redistest.New(t, "auth")
	gets := &countGets{}
	rdb.AddHook(gets)
	cfg := &config.Config{
		Auth:      config.Auth{Defaults: config.KeyDefaults{QuotaResetPeriod: "weekly", TotalQuota: 5000}},
		RateLimit: config.RateLimit{PerKey: config.PerKeyLimits{RequestsPerMinute: 100, MaxConcurrent: 5}},
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := NewRedisStore(rdb, prefix, cfg, 5*time.Second)
	s.now = func() time.Time { return now }

	mc := int64(2)
	secret, rec, err := keys.Create(ctx, rdb, prefix, keys.Spec{
		Name: "alice", UserID: "u-alice", AllowedIPs: []string{"10.0.0.0/8", "2001:db8::/32"},
		AllowedModels: []string{"qwen"}, Limits: &keys.Limits{MaxConcurrent: &mc},
	})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.LookupHash(ctx, HashSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != rec.ID || k.Name != "alice" || k.UserID != "u-alice" || k.Disabled {
		t.Fatalf("key = %+v", k)
	}
	// auth.defaults and rate_limit.per_key fill the gaps.
	if k.Period != "weekly" || k.Quota != 5000 || k.Limits.RequestsPerMinute != 100 || k.Limits.MaxConcurrent != 2 {
		t.Fatalf("key period %s, quota %d, limits %+v; want weekly, 5000, rpm 100 and max_concurrent 2", k.Period, k.Quota, k.Limits)
	}
	if e := k.Check(now, netip.MustParseAddr("2001:db8::1")); e != nil {
		t.Fatalf("Check from an allowed IPv6 address: %v", e)
	}
	if e := k.CheckModel("qwen"); e != nil {
		t.Fatalf("CheckModel of an allowed model: %v", e)
	}
	if e := k.Check(now, netip.MustParseAddr("192.168.0.1")); e == nil {
		t.Fatal("Check from outside allowed_ips passed")
	}

	// Cached: disabling shows only after the TTL.
	if _, err := keys.SetStatus(ctx, rdb, prefix, rec.ID, keys.StatusDisabled); err != nil {
		t.Fatal(err)
	}
	before := gets.n.Load()
	if k, err := s.LookupHash(ctx, HashSecret(secret)); err != nil || k.Disabled {
		t.Fatalf("within the TTL: %+v, %v; want the cached active key", k, err)
	}
	if gets.n.Load() != before {
		t.Fatal("a cached lookup read Redis")
	}
	now = now.Add(5 * time.Second)
	if k, err := s.LookupHash(ctx, HashSecret(secret)); err != nil || !k.Disabled {
		t.Fatalf("after the TTL: %+v, %v; want the disabled key", k, err)
	}

	// Unknown keys are cached too.
	unknown := HashSecret("sk-llmproxy-unknown")
	for range 3 {
		if _, err := s.LookupHash(ctx, unknown); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("unknown key: %v, want ErrUnknownKey", err)
		}
	}
	if got := gets.n.Load() - before; got != 2 {
		t.Fatalf("Redis GETs = %d, want 2 (one after the TTL, one for the unknown key)", got)
	}
	if err := keys.Delete(ctx, rdb, prefix, rec.ID); err != nil {
		t.Fatal(err)
	}
	now = now.Add(5 * time.Second)
	if _, err := s.LookupHash(ctx, HashSecret(secret)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("deleted key after the TTL: %v, want ErrUnknownKey", err)
	}
}

func TestRedisStoreErrorsAreNotCached(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer rdb.Close()
	s := NewRedisStore(rdb, "p", &config.Config{}, time.Minute)
	for range 2 {
		if _, err := s.LookupHash(context.Background(), "ab"); err == nil || errors.Is(err, ErrUnknownKey) {
			t.Fatalf("LookupHash with Redis down = %v, want a store error", err)
		}
	}
	if len(s.known) != 0 || len(s.unknown) != 0 {
		t.Fatalf("cache = %v, %v; want empty", s.known, s.unknown)
	}
}

// TestRedisStoreLookupBounded: a Redis that takes connections and never
// answers fails a look-up at the store's bound (plus what a try already
// under way takes), not after the client's retries of every read.
func TestRedisStoreLookupBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	// A TLS client: its handshake, part of each dial, meets the silence.
	// go-redis tries a dial five times, each within its dial timeout (a
	// second here, five by default), and the command three times more.
	rdb := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), DialTimeout: time.Second, MaxRetries: 3,
		TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	defer rdb.Close()
	s := NewRedisStore(rdb, "p", &config.Config{}, time.Minute)
	s.lookupTimeout = 300 * time.Millisecond
	start := time.Now()
	if _, err := s.LookupHash(context.Background(), "ab"); err == nil || errors.Is(err, ErrUnknownKey) {
		t.Fatalf("LookupHash with a silent Redis = %v, want a store error", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("the look-up took %s, want about its 300ms bound (a dial under way may finish its second)", d)
	}
}

// TestRedisStoreUnknownFloodKeepsKnownKeys: a flood of made-up keys fills
// only the unknown part of the cache, so a key in use is still answered
// from it, and the unknown part stays within its bound.
func TestRedisStoreUnknownFloodKeepsKnownKeys(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := redistest.New(t, "auth")
	gets := &countGets{}
	rdb.AddHook(gets)
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := NewRedisStore(rdb, prefix, &config.Config{}, time.Minute)
	s.now = func() time.Time { return now }
	s.maxKnown, s.maxUnknown = 100, 100

	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	hash := HashSecret(secret)
	if _, err := s.LookupHash(ctx, hash); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if _, err := s.LookupHash(ctx, HashSecret(fmt.Sprintf("sk-made-up-%d", i))); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("made-up key %d: %v, want ErrUnknownKey", i, err)
		}
	}
	before := gets.n.Load()
	if _, err := s.LookupHash(ctx, hash); err != nil {
		t.Fatal(err)
	}
	if gets.n.Load() != before {
		t.Fatal("after a flood of made-up keys, the key in use was read from Redis again within its TTL")
	}
	// The latest made-up key is still cached as unknown.
	if _, err := s.LookupHash(ctx, HashSecret("sk-made-up-999")); !errors.Is(err, ErrUnknownKey) || gets.n.Load() != before {
		t.Fatalf("latest made-up key: %v after %d Redis GETs; want ErrUnknownKey from the cache", err, gets.n.Load()-before)
	}
	s.unknownMu.Lock()
	n := len(s.unknown) + len(s.unknownOld)
	s.unknownMu.Unlock()
	if n > 100 {
		t.Fatalf("%d unknown keys cached, want at most 100", n)
	}
}

// TestRedisStoreLookupsWithinGlobalRate: with a global rate limit, secrets
// the store has not read are looked up in Redis only within that rate and
// burst (a flood of made-up keys costs Redis no more), while a key in use
// is re-read when its entry expires whatever the rate.
func TestRedisStoreLookupsWithinGlobalRate(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := redistest.New(t, "auth")
	gets := &countGets{}
	rdb.AddHook(gets)
	cfg := &config.Config{RateLimit: config.RateLimit{Global: config.GlobalLimit{RequestsPerSecond: 2, BurstSize: 3}}}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := NewRedisStore(rdb, prefix, cfg, 5*time.Second)
	s.now = func() time.Time { return now }
	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	alice := HashSecret(secret)
	if _, err := s.LookupHash(ctx, alice); err != nil {
		t.Fatal(err)
	}
	// The burst has two reads left: two made-up keys are read, the others
	// refused without a read.
	var limited *LookupsLimitedError
	for i := range 20 {
		_, err := s.LookupHash(ctx, HashSecret(fmt.Sprintf("sk-made-up-%d", i)))
		switch {
		case i < 2 && !errors.Is(err, ErrUnknownKey):
			t.Fatalf("made-up key %d within the burst: %v, want ErrUnknownKey", i, err)
		case i >= 2 && !errors.As(err, &limited):
			t.Fatalf("made-up key %d beyond the burst: %v, want a LookupsLimitedError", i, err)
		}
	}
	if got := gets.n.Load(); got != 3 {
		t.Fatalf("Redis GETs = %d, want 3 (alice and two made-up keys)", got)
	}
	if limited.RetryAfter != 500*time.Millisecond {
		t.Fatalf("RetryAfter = %s, want 500ms (one read every 1/2 s)", limited.RetryAfter)
	}
	// A made-up key already answered is still answered from the cache.
	if _, err := s.LookupHash(ctx, HashSecret("sk-made-up-0")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("cached made-up key: %v, want ErrUnknownKey", err)
	}
	// Past the TTL, with the budget spent again, alice is re-read all the
	// same, and a new key waits for the rate.
	now = now.Add(5 * time.Second)
	for i := range 3 {
		if _, err := s.LookupHash(ctx, HashSecret(fmt.Sprintf("sk-made-up-again-%d", i))); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("made-up key after the TTL: %v, want ErrUnknownKey", err)
		}
	}
	before := gets.n.Load()
	if k, err := s.LookupHash(ctx, alice); err != nil || k.Name != "alice" {
		t.Fatalf("alice after the TTL with the budget spent: %+v, %v", k, err)
	}
	if gets.n.Load() != before+1 {
		t.Fatal("alice after the TTL was not re-read from Redis")
	}
	bobSecret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LookupHash(ctx, HashSecret(bobSecret)); !errors.As(err, &limited) {
		t.Fatalf("new key with the budget spent: %v, want a LookupsLimitedError", err)
	}
	now = now.Add(limited.RetryAfter)
	if k, err := s.LookupHash(ctx, HashSecret(bobSecret)); err != nil || k.Name != "bob" {
		t.Fatalf("new key after RetryAfter: %+v, %v", k, err)
	}
}

// BenchmarkRedisStoreHit is the hot path: a key found in the cache.
func BenchmarkRedisStoreHit(b *testing.B) {
	ctx := context.Background()
	rdb, prefix := redistest.New(b, "auth")
	s := NewRedisStore(rdb, prefix, &config.Config{}, time.Hour)
	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	hash := HashSecret(secret)
	if _, err := s.LookupHash(ctx, hash); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.LookupHash(ctx, hash); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestRedisStoreLookupsShareOutAmongClients: one client (an IPv4 address,
// an IPv6 /64) may spend a quarter of the look-up budget: its flood of
// made-up keys leaves the rest to another client's new key.
func TestRedisStoreLookupsShareOutAmongClients(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := redistest.New(t, "auth")
	cfg := &config.Config{RateLimit: config.RateLimit{Global: config.GlobalLimit{RequestsPerSecond: 8, BurstSize: 8}}}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := NewRedisStore(rdb, prefix, cfg, 5*time.Second)
	s.now = func() time.Time { return now }
	// Real keys cost a client none of its share: five new keys in a row
	// from one client, past its burst of two.
	office := netip.MustParseAddr("203.0.113.9")
	for i := range 5 {
		secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{Name: fmt.Sprintf("staff-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.LookupHashFrom(ctx, HashSecret(secret), office); err != nil {
			t.Fatalf("new key %d from one client: %v", i, err)
		}
	}
	now = now.Add(time.Second) // the global budget back to its burst
	flooder := netip.MustParseAddr("2001:db8::1")
	var limited *LookupsLimitedError
	for i := range 20 {
		// The flooder's /64: one client, whatever address it takes.
		from := netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1))
		_, err := s.LookupHashFrom(ctx, HashSecret(fmt.Sprintf("sk-made-up-%d", i)), from)
		switch {
		case i < 2 && !errors.Is(err, ErrUnknownKey):
			t.Fatalf("made-up key %d within the client's share: %v, want ErrUnknownKey", i, err)
		case i >= 2 && !errors.As(err, &limited):
			t.Fatalf("made-up key %d beyond the client's share: %v, want a LookupsLimitedError", i, err)
		}
	}
	if limited.RetryAfter != 500*time.Millisecond {
		t.Fatalf("RetryAfter = %s, want 500ms (the client's share: 2 reads a second)", limited.RetryAfter)
	}
	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{Name: "new"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LookupHashFrom(ctx, HashSecret(secret), flooder); !errors.As(err, &limited) {
		t.Fatalf("a new key from the flooding client: %v, want a LookupsLimitedError", err)
	}
	if k, err := s.LookupHashFrom(ctx, HashSecret(secret), netip.MustParseAddr("192.0.2.7")); err != nil || k.Name != "new" {
		t.Fatalf("a new key from another client during the flood: %+v, %v", k, err)
	}
}

// afterGet runs fn, when armed, once a GET has been answered: between the
// store's read of a key and what it does with the answer.
type afterGet struct {
	armed atomic.Bool
	fn    func()
}

func (a *afterGet) DialHook(next redis.DialHook) redis.DialHook { return next }
func (a *afterGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (a *afterGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "get" && a.armed.CompareAndSwap(true, false) {
			a.fn()
		}
		return err
	}
}

// TestRedisStoreForgetDuringARead: a key changed and forgotten while a
// read of it is in flight is not cached as that read found it, whenever
// the Forget lands against the read's last steps. Forget runs from another
// goroutine after a spin of varying length, so that across the iterations
// it meets the read between its check of the forgets and its caching.
func TestRedisStoreForgetDuringARead(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := redistest.New(t, "authforget")
	writer := redis.NewClient(rdb.Options())
	t.Cleanup(func() { writer.Close() })
	s := NewRedisStore(rdb, prefix, &config.Config{}, time.Hour)
	secret, rec, err := keys.Create(ctx, writer, prefix, keys.Spec{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	hash := HashSecret(secret)
	hook := &afterGet{}
	rdb.AddHook(hook)
	var (
		forgotten chan struct{}
		spin      int
	)
	hook.fn = func() {
		// The change is written after the store's read, and announced.
		if _, err := keys.SetStatus(ctx, writer, prefix, rec.ID, keys.StatusDisabled); err != nil {
			t.Error(err)
		}
		n, done := spin, forgotten
		go func() {
			x := 0
			for i := range n {
				x += i
			}
			_ = x
			s.Forget(hash)
			close(done)
		}()
	}
	for i := range 2000 {
		if _, err := keys.SetStatus(ctx, writer, prefix, rec.ID, keys.StatusActive); err != nil {
			t.Fatal(err)
		}
		s.ForgetAll()
		forgotten, spin = make(chan struct{}), i%400*5
		hook.armed.Store(true)
		if _, err := s.LookupHash(ctx, hash); err != nil {
			t.Fatal(err)
		}
		<-forgotten
		// Forget has returned and no read is in flight: the next use
		// must see the key disabled.
		k, err := s.LookupHash(ctx, hash)
		if err != nil {
			t.Fatal(err)
		}
		if !k.Disabled {
			t.Fatalf("iteration %d (spin %d): the key was disabled and forgotten, and the store still serves it active", i, spin)
		}
	}
}
