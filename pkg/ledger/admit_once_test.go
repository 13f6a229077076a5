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
// holding its mark is lost with its connection (reset, as a proxy, a load
// balancer or the network does), after Redis ran the request. It counts
// the requests that held the mark.
type resetRelay struct {
	mu    sync.Mutex
	mark  []byte
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
					m := r.mark
					r.mu.Unlock()
					if n > 0 && len(m) > 0 && bytes.Contains(b[:n], m) {
						r.sent.Add(1)
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

// TestRedisAdmitterSendsAnAdmissionOnce: an admission Redis ran whose
// answer was lost is not sent again by go-redis (whose client retries by
// default): run again, it would count the first run's lease and places in
// the windows and could refuse the request that holds them. It fails, and
// once cancelled holds nothing; the key's next request is admitted.
func TestRedisAdmitterSendsAnAdmissionOnce(t *testing.T) {
	for _, split := range []bool{false, true} {
		name := "single node"
		if split {
			name = "split"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			a, direct, relay, prefix := resetAdmitter(t)
			a.split = split
			req := AdmitRequest{KeyID: "k", Global: GlobalLimit{RPS: 1000, Burst: 1000},
				Limits: KeyLimits{RPS: 1, MaxConcurrent: 1, RPM: 100, TPM: 1000000},
				Quota:  1000000, Reserve: 424242, LeaseTTL: time.Minute}
			relay.setMark("424242")
			r1 := req
			r1.LeaseID = "r1"
			d, err := a.Admit(ctx, r1)
			if n := relay.sent.Load(); n != 1 || err == nil {
				t.Fatalf("an admission whose answer was lost: sent %d times, Admit = %+v, %v; want it sent once and failed", n, d, err)
			}
			a.cancels.wait()
			if lease, resv, rpm := held(t, direct, prefix, "r1"); lease || resv || rpm {
				t.Fatalf("the failed admission holds lease=%v reservation=%v rpm=%v once cancelled", lease, resv, rpm)
			}
			time.Sleep(1100 * time.Millisecond) // the key's RPS
			r2 := req
			r2.LeaseID = "r2"
			if d, err := a.Admit(ctx, r2); err != nil || !d.Allowed {
				t.Fatalf("the key's next request: %+v, %v; want it admitted", d, err)
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
