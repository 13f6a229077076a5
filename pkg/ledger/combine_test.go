package ledger

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// roundTrips counts the commands and pipelines a client sends.
type roundTrips struct {
	n   atomic.Int64 // sends: a command alone or a whole pipeline
	gap time.Duration
}

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		time.Sleep(h.gap)
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		time.Sleep(h.gap) // a slow network: callers pile up behind a send
		return next(ctx, cmds)
	}
}

// TestRedisAdmitterCombinesConcurrentCalls: admissions and releases of
// concurrent requests share pipelines, and each still gets its own exact
// answer.
func TestRedisAdmitterCombinesConcurrentCalls(t *testing.T) {
	ctx := context.Background()
	rdb := testRedis(t)
	prefix := testPrefix(t, rdb)
	hook := &roundTrips{gap: 2 * time.Millisecond}
	rdb.AddHook(hook)
	a := NewRedisAdmitter(rdb, prefix)
	// The first send caches the script; NOSCRIPT must not fail a batch.
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	hook.n.Store(0)

	const callers = 100
	req := AdmitRequest{KeyID: "k", Limits: KeyLimits{MaxConcurrent: 30, RPM: 1000}, LeaseTTL: time.Minute}
	var allowed atomic.Int64
	var leases sync.Map
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			r := req
			r.LeaseID = fmt.Sprintf("r%d", i)
			d, err := a.Admit(ctx, r)
			if err != nil {
				t.Error(err)
				return
			}
			if d.Allowed {
				allowed.Add(1)
				leases.Store(r.LeaseID, true)
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 30 {
		t.Fatalf("admitted %d of %d concurrent requests with max_concurrent 30, want 30", n, callers)
	}
	admits := hook.n.Load()
	if admits >= callers/4 {
		t.Fatalf("%d concurrent admissions took %d sends; want them combined (fewer than %d)", callers, admits, callers/4)
	}

	hook.n.Store(0)
	leases.Range(func(k, _ any) bool {
		wg.Go(func() {
			if err := a.Release(ctx, "k", k.(string)); err != nil {
				t.Error(err)
			}
		})
		return true
	})
	wg.Wait()
	if n := hook.n.Load(); n >= 30/3 {
		t.Fatalf("30 concurrent releases took %d sends; want them combined", n)
	}
	if n := rdb.ZCard(ctx, prefix+":{k}:rl:leases").Val(); n != 0 {
		t.Fatalf("%d leases left after releasing all", n)
	}
	t.Logf("%d admissions in %d sends", callers, admits)
}

// TestCombinerAloneSendsAtOnce: a caller that finds nothing in flight is not
// held back, and a failing command fails only itself.
func TestCombinerAloneSendsAtOnce(t *testing.T) {
	ctx := context.Background()
	rdb := testRedis(t)
	prefix := testPrefix(t, rdb)
	c := &combiner{rdb: rdb}
	if err := rdb.Set(ctx, prefix+":str", "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	// ZREM on a string is a WRONGTYPE error for that command only.
	if err := c.zrem(ctx, prefix+":str", "m").Err(); err == nil {
		t.Fatal("ZREM on a string: want WRONGTYPE")
	}
	if err := rdb.ZAdd(ctx, prefix+":z", redis.Z{Score: 1, Member: "m"}).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.zrem(ctx, prefix+":z", "m").Result(); err != nil || n != 1 {
		t.Fatalf("zrem = %d, %v; want 1", n, err)
	}
	if c.busy || len(c.queue) != 0 {
		t.Fatalf("combiner left busy=%v with %d queued", c.busy, len(c.queue))
	}
}

// silentRedis listens like a Redis that accepts connections and then never
// answers: a server that is stopped (SIGSTOP), swapping, or cut off by the
// network after the handshake. It reads and discards what it is sent.
func silentRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	return ln.Addr().String()
}

// TestRedisAdmitterGivesUpOnSilentRedis: a Redis that accepts connections
// but never answers fails an admission and a release within the
// admitter's timeout, so that the gateway refuses the request with 503
// rather than holding it for as long as Redis stays silent (go-redis alone
// retries a pipeline on new connections for as long as their handshakes
// time out).
func TestRedisAdmitterGivesUpOnSilentRedis(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{
		Addr: silentRedis(t), DialTimeout: 300 * time.Millisecond,
		ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond,
	})
	t.Cleanup(func() { rdb.Close() })
	a := NewRedisAdmitter(rdb, "silent")
	a.batch.timeout = 300 * time.Millisecond
	req := AdmitRequest{KeyID: "k", LeaseID: "r1", Limits: KeyLimits{MaxConcurrent: 1}, LeaseTTL: time.Minute}

	calls := map[string]func(ctx context.Context) error{
		"admit": func(ctx context.Context) error {
			_, err := a.Admit(ctx, req)
			return err
		},
		"release": func(ctx context.Context) error { return a.Release(ctx, "k", "r1") },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- call(context.Background()) }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("a Redis that never answers: want an error")
				}
				t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
				if d := time.Since(start); d > 1500*time.Millisecond {
					t.Fatalf("a Redis that never answers held the call %s; want it given up after the admitter's timeout (300ms) and one read timeout (300ms)", d.Round(time.Millisecond))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("still waiting for a Redis that never answers after 10s")
			}
		})
	}
}

// TestCombinerFailedConnectionFailsEachCommand: a pipeline that never went
// out (its connection failed AUTH: a wrong password, a rotation done in the
// wrong order) fails each of its commands with that error. go-redis leaves
// them without reply or error, which read as empty replies: an admission
// failed with "unexpected type=<nil>", a lease release looked done.
func TestCombinerFailedConnectionFailsEachCommand(t *testing.T) {
	ctx := context.Background()
	good := testRedis(t)
	opts := *good.Options()
	opts.Username, opts.Password = "llmproxy-test-nobody", "wrong-password"
	opts.MaxRetries = -1
	rdb := redis.NewClient(&opts)
	defer rdb.Close()
	c := &combiner{rdb: rdb}
	if err := c.zrem(ctx, "llmproxy-test:z", "m").Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("ZREM over a connection that failed AUTH: %v, want its WRONGPASS", err)
	}
	a := NewRedisAdmitter(rdb, "llmproxy-test-auth")
	_, err := a.Admit(ctx, AdmitRequest{KeyID: "k", LeaseID: "l1", Limits: KeyLimits{RPM: 10}})
	if err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("admission over a connection that failed AUTH: %v, want its WRONGPASS", err)
	}
}
