package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// holdRelay forwards TCP connections to a Redis server and can hold what
// clients send it: the bytes a client writes while its connection is held
// stay in the relay, as in the socket of a frozen Redis or in a cut network,
// until the test flushes them to the server (even after the client has
// given up and closed its connection) or drops them. The server's replies
// go back to the client while it is there and are read and discarded once
// it has gone.
type holdRelay struct {
	t      *testing.T
	target string

	mu      sync.Mutex
	holding bool // connections accepted now start held
	conns   []*relayConn
}

type relayConn struct {
	server net.Conn
	// Under holdRelay.mu:
	held     bool
	buf      []byte
	answered chan struct{} // closed when the server next replies
}

func newHoldRelay(t *testing.T, target string) (*holdRelay, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &holdRelay{t: t, target: target}
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			c := &relayConn{server: server}
			r.mu.Lock()
			c.held = r.holding
			r.conns = append(r.conns, c)
			open = append(open, client, server)
			r.mu.Unlock()
			go r.up(client, c)
			go r.down(client, c)
		}
	}()
	return r, ln.Addr().String()
}

// up carries what the client sends, or holds it.
func (r *holdRelay) up(client net.Conn, c *relayConn) {
	b := make([]byte, 64<<10)
	for {
		n, err := client.Read(b)
		if n > 0 {
			r.mu.Lock()
			if c.held {
				c.buf = append(c.buf, b[:n]...)
			} else {
				c.server.Write(b[:n])
			}
			r.mu.Unlock()
		}
		if err != nil {
			return // the server side stays open for what is held
		}
	}
}

// down carries the server's replies back, or reads them into nothing once
// the client has gone.
func (r *holdRelay) down(client net.Conn, c *relayConn) {
	b := make([]byte, 64<<10)
	for {
		n, err := c.server.Read(b)
		if n > 0 {
			r.mu.Lock()
			if c.answered != nil {
				close(c.answered)
				c.answered = nil
			}
			r.mu.Unlock()
			client.Write(b[:n])
		}
		if err != nil {
			return
		}
	}
}

// hold holds the bytes clients send from now on, on every connection.
func (r *holdRelay) hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holding = true
	for _, c := range r.conns {
		c.held = true
	}
}

// conn returns connection i (in the order accepted).
func (r *holdRelay) conn(i int) *relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.conns) {
		r.t.Fatalf("relay: no connection %d (%d accepted)", i, len(r.conns))
	}
	return r.conns[i]
}

// flush sends what connection i holds to the server, stops holding it, and
// waits for the server's reply.
func (r *holdRelay) flush(i int) {
	c := r.conn(i)
	r.mu.Lock()
	if len(c.buf) == 0 {
		r.mu.Unlock()
		r.t.Fatalf("relay: connection %d holds nothing", i)
	}
	answered := make(chan struct{})
	c.answered = answered
	c.server.Write(c.buf)
	c.buf, c.held = nil, false
	r.mu.Unlock()
	select {
	case <-answered:
	case <-time.After(10 * time.Second):
		r.t.Fatalf("relay: no reply from the server on connection %d", i)
	}
}

// drop loses what connection i holds, and stops holding it.
func (r *holdRelay) drop(i int) {
	c := r.conn(i)
	r.mu.Lock()
	defer r.mu.Unlock()
	c.buf, c.held = nil, false
}

// pass stops holding: new connections pass, and every connection but
// those in except sends the server what it held.
func (r *holdRelay) pass(except ...int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holding = false
	for i, c := range r.conns {
		if slices.Contains(except, i) || !c.held {
			continue
		}
		c.server.Write(c.buf)
		c.buf, c.held = nil, false
	}
}

// relayedAdmitter returns an admitter whose calls go through a holdRelay to
// the test Redis and give up after a few hundred ms, a client straight to
// the test Redis to look at its keys, and the relay. The relay's first
// connection is the admitter's only one until a call fails.
func relayedAdmitter(t *testing.T) (*RedisAdmitter, *redis.Client, *holdRelay, string) {
	t.Helper()
	direct := testRedis(t)
	prefix := testPrefix(t, direct)
	relay, addr := newHoldRelay(t, direct.Options().Addr)
	opts := *direct.Options()
	opts.Addr = addr
	opts.PoolSize, opts.MaxRetries = 1, -1
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond
	rdb := redis.NewClient(&opts)
	t.Cleanup(func() { rdb.Close() })
	a := NewRedisAdmitter(rdb, prefix)
	a.batch.timeout = 300 * time.Millisecond
	return a, direct, relay, prefix
}

// held reports what key k of prefix holds for request id: its lease, its
// reservation and its place in the RPM window.
func held(t *testing.T, rdb *redis.Client, prefix, id string) (lease, resv, rpm bool) {
	t.Helper()
	ctx := context.Background()
	tag := prefix + ":{k}"
	has := func(err error) bool {
		if errors.Is(err, redis.Nil) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	}
	lease = has(rdb.ZScore(ctx, tag+":rl:leases", id).Err())
	resv = has(rdb.HGet(ctx, tag+":rl:resv", id).Err()) || has(rdb.ZScore(ctx, tag+":rl:resvexp", id).Err())
	rpm = has(rdb.ZScore(ctx, tag+":rl:rpm", id).Err())
	return lease, resv, rpm
}

// TestRedisAdmitterFailedAdmissionHoldsNothing: an admission whose call
// timed out (the gateway refused the request with 503) but that Redis runs
// later holds no concurrency slot and no tokens once Redis answers again,
// whether it runs before or after its cancellation.
func TestRedisAdmitterFailedAdmissionHoldsNothing(t *testing.T) {
	req := AdmitRequest{KeyID: "k", Limits: KeyLimits{MaxConcurrent: 1, RPM: 100, TPM: 100000},
		Quota: 1000000, Reserve: 500, LeaseTTL: time.Minute}
	for _, tc := range []struct {
		name string
		// late runs the held admission (the relay's connection 0) and its
		// cancellation, in some order.
		late func(t *testing.T, a *RedisAdmitter, direct *redis.Client, relay *holdRelay, prefix string)
	}{
		{"admission runs first", func(t *testing.T, a *RedisAdmitter, direct *redis.Client, relay *holdRelay, prefix string) {
			relay.flush(0)
			if lease, resv, _ := held(t, direct, prefix, "r1"); !lease || !resv {
				t.Fatalf("the late admission ran but holds lease=%v reservation=%v; want both (the case under test)", lease, resv)
			}
			relay.pass()
			a.cancels.wait()
		}},
		{"cancellation runs first", func(t *testing.T, a *RedisAdmitter, direct *redis.Client, relay *holdRelay, prefix string) {
			relay.pass(0)
			a.cancels.wait()
			relay.flush(0)
		}},
	} {
		for _, split := range []bool{false, true} {
			name := tc.name
			if split {
				name += "/split"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				a, direct, relay, prefix := relayedAdmitter(t)
				// split decides as on Redis Cluster: the key's script and the
				// global one in a pipeline of their own.
				a.split = split
				req := req
				if split {
					req.Global = GlobalLimit{RPS: 1000}
				}
				// The first call loads the script and opens the connection the
				// held admission goes on; it reserves nothing.
				warm := req
				warm.LeaseID, warm.Reserve = "warm", 0
				if d, err := a.Admit(ctx, warm); err != nil || !d.Allowed {
					t.Fatalf("Admit = %+v, %v", d, err)
				}
				if err := a.Release(ctx, "k", "warm"); err != nil {
					t.Fatal(err)
				}

				relay.hold()
				r1 := req
				r1.LeaseID = "r1"
				if d, err := a.Admit(ctx, r1); err == nil {
					t.Fatalf("Admit through a held connection = %+v; want a timeout", d)
				}
				tc.late(t, a, direct, relay, prefix)

				if lease, resv, rpm := held(t, direct, prefix, "r1"); lease || resv || rpm {
					t.Fatalf("after its call failed, the admission holds lease=%v reservation=%v rpm=%v; want none", lease, resv, rpm)
				}
				sum, err := direct.Get(ctx, prefix+":{k}:rl:resvsum").Int64()
				if err != nil && !errors.Is(err, redis.Nil) {
					t.Fatal(err)
				}
				if sum != 0 {
					t.Fatalf("reservations' sum = %d after the failed admission; want 0", sum)
				}
				// The key's one slot is free for the next request.
				r2 := req
				r2.LeaseID = "r2"
				if d, err := a.Admit(ctx, r2); err != nil || !d.Allowed {
					t.Fatalf("next request: Admit = %+v, %v; want admitted (max_concurrent 1)", d, err)
				}
			})
		}
	}
}

// TestRedisAdmitterFailedReleaseFreesLease: a release whose call timed out
// and never reached Redis is sent again once Redis answers, so the slot
// does not stay taken until the lease expires.
func TestRedisAdmitterFailedReleaseFreesLease(t *testing.T) {
	ctx := context.Background()
	a, direct, relay, prefix := relayedAdmitter(t)
	req := AdmitRequest{KeyID: "k", LeaseID: "r1", Limits: KeyLimits{MaxConcurrent: 1}, LeaseTTL: time.Minute}
	if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
		t.Fatalf("Admit = %+v, %v", d, err)
	}
	relay.hold()
	if err := a.Release(ctx, "k", "r1"); err == nil {
		t.Fatal("Release through a held connection: want a timeout")
	}
	if f := a.FollowUps(); f.Waiting != 1 || f.Dropped != 0 {
		t.Fatalf("FollowUps = %+v while Redis does not answer; want the release waiting", f)
	}
	relay.drop(0) // lost on the way
	relay.pass()
	a.cancels.wait()
	if lease, _, _ := held(t, direct, prefix, "r1"); lease {
		t.Fatal("lease still held after its release failed and Redis answers again; want it released")
	}
	if f := a.FollowUps(); f != (FollowUps{}) {
		t.Fatalf("FollowUps = %+v once Redis answered; want none", f)
	}
}

// TestCancellerDropsPastItsBound: past its bound the canceller queues no
// more follow-ups and counts the ones it dropped.
func TestCancellerDropsPastItsBound(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: silentRedis(t), DialTimeout: 100 * time.Millisecond,
		ReadTimeout: 100 * time.Millisecond, MaxRetries: -1})
	a := NewRedisAdmitter(rdb, "silent")
	a.batch.timeout = 100 * time.Millisecond
	a.cancels.max = 2
	for i := range 3 {
		if _, err := a.Admit(context.Background(), AdmitRequest{KeyID: "k", LeaseID: fmt.Sprintf("r%d", i), Limits: KeyLimits{MaxConcurrent: 1}}); err == nil {
			t.Fatal("Admit on a silent Redis: want an error")
		}
	}
	if f := a.FollowUps(); f != (FollowUps{Waiting: 2, Dropped: 1}) {
		t.Fatalf("FollowUps = %+v after 3 failed admissions with room for 2; want 2 waiting, 1 dropped", f)
	}
	rdb.Close()
	a.cancels.wait()
}

// TestCancellerStopsWhenClientCloses: calls waiting for a Redis that never
// answers are given up when the client is closed (the process shuts down).
func TestCancellerStopsWhenClientCloses(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: silentRedis(t), DialTimeout: 100 * time.Millisecond,
		ReadTimeout: 100 * time.Millisecond, MaxRetries: -1})
	a := NewRedisAdmitter(rdb, "silent")
	a.batch.timeout = 100 * time.Millisecond
	if _, err := a.Admit(context.Background(), AdmitRequest{KeyID: "k", LeaseID: "r1", Limits: KeyLimits{MaxConcurrent: 1}}); err == nil {
		t.Fatal("Admit on a silent Redis: want an error")
	}
	rdb.Close()
	a.cancels.wait()
}

// TestRetryable: only failures that may pass on a later try are sent again.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{redis.ErrClosed, false},
		{context.DeadlineExceeded, true},
		{io.EOF, true},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{redis.ErrNoScript, true},
		{testRedisError("LOADING Redis is loading the dataset in memory"), true},
		{testRedisError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

type testRedisError string

func (e testRedisError) Error() string { return string(e) }
func (testRedisError) RedisError()     {}
