package ledger

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// resetRelay forwards connections to Redis; the first answer to a request
// holding its mark is lost with its connection (closed, as a proxy, a load
// balancer or the network does), after Redis ran the request, or, with
// drop, the request itself, before Redis has it (as with a connection
// Redis closed while it was idle in the client's pool). It counts the
// requests that held the mark.
type resetRelay struct {
	mu    sync.Mutex
	mark  []byte
	drop  bool
	sent  atomic.Int32
	reset atomic.Bool // the one reset is done
}

func (r *resetRelay) setMark(m string) {
	r.mu.Lock()
	r.mark = []byte(m)
	r.mu.Unlock()
}

func newResetRelay(t *testing.T, target string) (*resetRelay, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &resetRelay{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			var marked atomic.Bool
			go func() {
				b := make([]byte, 64<<10)
				for {
					n, err := c.Read(b)
					r.mu.Lock()
					m, drop := r.mark, r.drop
					r.mu.Unlock()
					if n > 0 && len(m) > 0 && bytes.Contains(b[:n], m) {
						r.sent.Add(1)
						if drop && r.reset.CompareAndSwap(false, true) {
							c.Close()
							s.Close()
							return
						}
						marked.Store(true)
					}
					if n > 0 {
						_, _ = s.Write(b[:n])
					}
					if err != nil {
						s.Close()
						return
					}
				}
			}()
			go func() {
				b := make([]byte, 64<<10)
				for {
					n, err := s.Read(b)
					if n > 0 && marked.Load() && r.reset.CompareAndSwap(false, true) {
						c.Close()
						s.Close()
						return
					}
					if n > 0 {
						_, _ = c.Write(b[:n])
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return r, ln.Addr().String()
}

// resetAdmitter returns an admitter whose client has go-redis's default
// retries and goes through a resetRelay, a client straight to the test
// Redis, the relay and the key prefix.
func resetAdmitter(t *testing.T) (*RedisAdmitter, *redis.Client, *resetRelay, string) {
	t.Helper()
	direct := testRedis(t)
	prefix := testPrefix(t, direct)
	relay, addr := newResetRelay(t, direct.Options().Addr)
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: direct.Options().DB, Protocol: direct.Options().Protocol})
	t.Cleanup(func() { rdb.Close() })
	return NewRedisAdmitter(rdb, prefix), direct, relay, prefix
}

// TestRedisAdmitterSendsAnAdmissionOnce: an admission whose connection
// closed without an answer is sent a second time, once: it ran before the
// connection closed or it did not, and will not run later. Sent again as
// it was, one that ran would count its own lease and places in the windows
// and could refuse itself; sent as a second sending, it is admitted holding
// one lease, one place in the RPM window and one reservation, whether the
// first ran (its answer lost) or not (dropped with its connection).
func TestRedisAdmitterSendsAnAdmissionOnce(t *testing.T) {
	for _, tc := range []struct {
		name        string
		split, drop bool
	}{
		{"answer lost", false, false},
		{"answer lost, split", true, false},
		{"request dropped", false, true},
		{"request dropped, split", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			a, direct, relay, prefix := resetAdmitter(t)
			a.split = tc.split
			// Every limit at one request: a second count of it refuses.
			req := AdmitRequest{KeyID: "k", Global: GlobalLimit{RPS: 1000, Burst: 1000},
				Limits: KeyLimits{RPS: 1, MaxConcurrent: 1, RPM: 1, TPM: 424242},
				Quota:  1000000, Reserve: 424242, LeaseTTL: time.Minute}
			// Redis has the scripts (else the first answer is NOSCRIPT).
			if _, err := a.Admit(ctx, AdmitRequest{KeyID: "other", LeaseID: "w", Global: req.Global, LeaseTTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
			relay.mu.Lock()
			relay.mark, relay.drop = []byte("424242"), tc.drop
			relay.mu.Unlock()
			r1 := req
			r1.LeaseID = "r1"
			d, err := a.Admit(ctx, r1)
			if n := relay.sent.Load(); n != 2 || err != nil || !d.Allowed {
				t.Fatalf("an admission whose connection closed: sent %d times, Admit = %+v, %v; want it sent twice and admitted", n, d, err)
			}
			if lease, resv, rpm := held(t, direct, prefix, "r1"); !lease || !resv || !rpm {
				t.Fatalf("the admission holds lease=%v reservation=%v rpm=%v; want all", lease, resv, rpm)
			}
			tag := prefix + ":{k}"
			if n, _ := direct.ZCard(ctx, tag+":rl:rpm").Result(); n != 1 {
				t.Errorf("the RPM window holds %d requests, want 1", n)
			}
			if v, _ := direct.Get(ctx, tag+":rl:resvsum").Int64(); v != 424242 {
				t.Errorf("reserved %d tokens, want 424242", v)
			}
			if err := a.Release(ctx, "k", "r1"); err != nil {
				t.Fatal(err)
			}
			if lease, _, _ := held(t, direct, prefix, "r1"); lease {
				t.Error("released, the lease is still held")
			}
		})
	}
}

// TestRedisAdmitterUndoesOnce: on Redis Cluster (the split path), the undo
// of the global bucket's admission of a request its key refused, whose
// answer was lost, is not sent again: run twice, it gives the bucket back
// twice, and the global limit admits one request more than its burst.
func TestRedisAdmitterUndoesOnce(t *testing.T) {
	ctx := context.Background()
	a, direct, relay, prefix := resetAdmitter(t)
	t.Cleanup(func() { direct.Del(context.Background(), prefix+":global:rl:tat") })
	a.split = true
	g := GlobalLimit{RPS: 0.01, Burst: 3} // one per 100 s, bursts of 3
	admit := func(key, id string, l KeyLimits) Decision {
		d, _ := a.Admit(ctx, AdmitRequest{KeyID: key, LeaseID: id, Global: g, Limits: l, LeaseTTL: time.Minute})
		return d
	}
	if !admit("a", "a1", KeyLimits{}).Allowed || !admit("k", "h", KeyLimits{MaxConcurrent: 1}).Allowed {
		t.Fatal("the burst's first two requests refused")
	}
	// r1: the global bucket admits it, its key refuses it (concurrency),
	// and the undo's answer is lost.
	relay.setMark(a.undoScript.sha)
	if admit("k", "r1", KeyLimits{MaxConcurrent: 1}).Allowed {
		t.Fatal("r1 admitted past its key's concurrency")
	}
	if n := relay.sent.Load(); n != 1 {
		t.Fatalf("the undo was sent %d times, want once", n)
	}
	n := 0
	for _, id := range []string{"b1", "b2", "b3"} {
		if admit("b", id, KeyLimits{}).Allowed {
			n++
		}
	}
	if n > 1 {
		t.Fatalf("a burst of 3 after 2 admissions admitted %d more; want at most 1", n)
	}
}
