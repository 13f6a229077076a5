package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// sweepTwin is one of two admitters fed the same operations: one never
// sweeps, the other sweeps after every operation.
type sweepTwin struct {
	a     *MemoryAdmitter
	store *LocalStore // nil: a memory admitter the caller settles
	clock *fakeClock
}

func newSweepTwin(t *testing.T, local, sweeps bool, start time.Time) *sweepTwin {
	t.Helper()
	tw := &sweepTwin{clock: &fakeClock{t: start}}
	if local {
		s, err := OpenLocal(filepath.Join(t.TempDir(), "ledger.db"), WithClock(tw.clock.Now))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		tw.store, tw.a = s, NewLocalAdmitter(s, tw.clock.Now)
	} else {
		tw.a = NewMemoryAdmitter(nil, tw.clock.Now)
	}
	if !sweeps {
		tw.a.sweep.every, tw.a.sweep.perNew = 0, 0
	}
	return tw
}

// sweep passes over every key now and returns how many it dropped.
func (tw *sweepTwin) sweep() int {
	tw.a.mu.Lock()
	defer tw.a.mu.Unlock()
	n := len(tw.a.keys)
	tw.a.sweep.cursor = 0 // a pass from the end
	tw.a.sweepStep(tw.clock.Now(), n)
	return n - len(tw.a.keys)
}

// TestMemoryAdmitterSweepKeepsDecisions: a sweep changes no decision. Two
// admitters get the same random sequence of admissions, releases, renewals,
// settlements (the gateway's Settle, or the local store's Apply) and clock
// moves; one sweeps after every step, the other never; every answer must
// be the same.
func TestMemoryAdmitterSweepKeepsDecisions(t *testing.T) {
	// Each key has its own limits, as keys do.
	type keyConf struct {
		limits KeyLimits
		quota  int64
		period Period
	}
	keys := []keyConf{
		{limits: KeyLimits{RPS: 2}},
		{limits: KeyLimits{RPS: 0.05}}, // a tat far ahead of now
		{limits: KeyLimits{RPM: 3}},
		{limits: KeyLimits{MaxConcurrent: 2}},
		{limits: KeyLimits{TPM: 500}},
		{quota: 800, period: Daily},
		{quota: 1500, period: Never},
		{limits: KeyLimits{RPS: 1, RPM: 4, MaxConcurrent: 2, TPM: 600}, quota: 1000, period: Monthly},
	}
	start := time.Date(2026, 11, 25, 23, 50, 0, 0, time.UTC) // crosses midnight
	for _, local := range []bool{false, true} {
		for seed := range uint64(8) {
			t.Run(fmt.Sprintf("local=%v/seed=%d", local, seed), func(t *testing.T) {
				ctx := context.Background()
				kept, swept := newSweepTwin(t, local, false, start), newSweepTwin(t, local, true, start)
				rng := rand.New(rand.NewPCG(seed, 1))
				type held struct{ key, lease string }
				var admitted []held
				dropped, next := 0, 0
				for step := range 2000 {
					where := func() string { return fmt.Sprintf("step %d at %s", step, kept.clock.Now().Format(time.TimeOnly)) }
					switch op := rng.IntN(100); {
					case op < 45:
						ki := rng.IntN(len(keys))
						lease := "r" + strconv.Itoa(next)
						next++
						if len(admitted) > 0 && rng.IntN(10) == 0 {
							lease = admitted[rng.IntN(len(admitted))].lease // admitted again
						}
						req := AdmitRequest{
							KeyID: "k" + strconv.Itoa(ki), LeaseID: lease,
							Limits: keys[ki].limits, Quota: keys[ki].quota, Period: keys[ki].period,
							Reserve: int64(rng.IntN(300)),
						}
						if rng.IntN(3) == 0 {
							req.LeaseTTL = 30 * time.Second
						}
						if rng.IntN(4) == 0 {
							req.Global = GlobalLimit{RPS: 5, Burst: 3}
						}
						d1, err1 := kept.a.Admit(ctx, req)
						d2, err2 := swept.a.Admit(ctx, req)
						if d1 != d2 || (err1 == nil) != (err2 == nil) {
							t.Fatalf("%s: Admit(%+v) = %+v, %v kept; %+v, %v swept", where(), req, d1, err1, d2, err2)
						}
						if d1.Allowed {
							admitted = append(admitted, held{req.KeyID, lease})
						}
					case op < 55 && len(admitted) > 0:
						h := admitted[rng.IntN(len(admitted))]
						_ = kept.a.Release(ctx, h.key, h.lease)
						_ = swept.a.Release(ctx, h.key, h.lease)
					case op < 60 && len(admitted) > 0:
						h := admitted[rng.IntN(len(admitted))]
						ok1, _ := kept.a.Renew(ctx, h.key, h.lease, 30*time.Second)
						ok2, _ := swept.a.Renew(ctx, h.key, h.lease, 30*time.Second)
						if ok1 != ok2 {
							t.Fatalf("%s: Renew(%s, %s) = %v kept, %v swept", where(), h.key, h.lease, ok1, ok2)
						}
					case op < 78 && len(admitted) > 0:
						h := admitted[rng.IntN(len(admitted))]
						tokens := int64(rng.IntN(300))
						at := kept.clock.Now().Add(-time.Duration(rng.IntN(5)) * time.Second)
						if !local {
							ok1 := kept.a.Settle(h.key, h.lease, tokens, at)
							ok2 := swept.a.Settle(h.key, h.lease, tokens, at)
							if ok1 != ok2 {
								t.Fatalf("%s: Settle(%s, %s) = %v kept, %v swept", where(), h.key, h.lease, ok1, ok2)
							}
							break
						}
						e := []Entry{{RequestID: h.lease, KeyID: h.key, Time: at, PromptTokens: tokens, Reserved: 100}}
						n1, err1 := kept.store.Apply(ctx, e)
						n2, err2 := swept.store.Apply(ctx, e)
						if err1 != nil || err2 != nil || n1 != n2 {
							t.Fatalf("%s: Apply = %d, %v kept; %d, %v swept", where(), n1, err1, n2, err2)
						}
					case op < 80 && local:
						// The store's own reservation counter, which an
						// entry whose reservation the admitter no longer
						// holds is taken from.
						id := "k" + strconv.Itoa(rng.IntN(len(keys)))
						if err := kept.store.AddReserved(ctx, id, 100); err != nil {
							t.Fatal(err)
						}
						if err := swept.store.AddReserved(ctx, id, 100); err != nil {
							t.Fatal(err)
						}
					case op < 97:
						d := time.Duration(rng.IntN(20_000)) * time.Millisecond
						kept.clock.Advance(d)
						swept.clock.Advance(d)
					default:
						kept.clock.Advance(11 * time.Minute) // past every TTL
						swept.clock.Advance(11 * time.Minute)
					}
					dropped += swept.sweep()
					if step%50 != 49 {
						// Reading reservations purges the key: not at
						// every step, or the admitter that never sweeps
						// would be purged as often as a sweep does.
						continue
					}
					for i := range keys {
						id := "k" + strconv.Itoa(i)
						if r1, r2 := kept.a.reserved(id), swept.a.reserved(id); r1 != r2 {
							t.Fatalf("%s: %s reserved %d kept, %d swept", where(), id, r1, r2)
						}
					}
					if local {
						for i := range keys {
							id := "k" + strconv.Itoa(i)
							r1, err1 := kept.store.Reserved(ctx, id)
							r2, err2 := swept.store.Reserved(ctx, id)
							if err1 != nil || err2 != nil || r1 != r2 {
								t.Fatalf("%s: store reserved %s = %d, %v kept; %d, %v swept", where(), id, r1, err1, r2, err2)
							}
						}
					}
				}
				if dropped == 0 {
					t.Fatal("no sweep dropped a key: the sequence never left a key idle")
				}
			})
		}
	}
}

// admitOthers admits n requests of another key at the clock's time, each
// released at once, and fails the test if one is refused.
func admitOthers(t *testing.T, a *MemoryAdmitter, n int) {
	t.Helper()
	ctx := context.Background()
	req := AdmitRequest{KeyID: "other", Limits: KeyLimits{MaxConcurrent: 1}}
	for i := range n {
		req.LeaseID = "other-" + strconv.Itoa(i)
		if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
			t.Fatalf("Admit %s = %+v, %v", req.LeaseID, d, err)
		}
		if err := a.Release(ctx, req.KeyID, req.LeaseID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMemoryAdmitterForgetsIdleKeys: the admitter keeps the state of the
// keys in use, not of every identity it has seen. A stream of distinct
// identities (made by a Lua on_auth hook out of client input, say) used to
// leave one entry each for the life of the process.
func TestMemoryAdmitterForgetsIdleKeys(t *testing.T) {
	ctx := context.Background()
	const identities = 100_000
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	// forgotten fails the test unless a holds at most the key "other".
	forgotten := func(t *testing.T, a *MemoryAdmitter, identities int) {
		t.Helper()
		if k, u, c := len(a.keys), len(a.usageCache), cap(a.sweep.order); k > 1 || u > 0 || c > memSweepShrinkMin {
			t.Fatalf("after %d identities the admitter holds %d keys and %d cached usages in an index of %d; want one key (other) in at most %d",
				identities, k, u, c, memSweepShrinkMin)
		}
	}

	t.Run("windows", func(t *testing.T) {
		// Every limit on: each identity's state lives a minute (RPM and
		// TPM windows) after its request; then it goes, within a
		// minute, as admissions of other keys come.
		clock := &fakeClock{t: start}
		a := NewMemoryAdmitter(nil, clock.Now)
		req := AdmitRequest{Limits: KeyLimits{RPS: 10, RPM: 100, MaxConcurrent: 2, TPM: 10_000}, Quota: 1 << 40, Reserve: 100}
		for i := range identities {
			req.KeyID, req.LeaseID = "id-"+strconv.Itoa(i), "r-"+strconv.Itoa(i)
			if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
				t.Fatalf("Admit %s = %+v, %v", req.KeyID, d, err)
			}
			if err := a.Release(ctx, req.KeyID, req.LeaseID); err != nil {
				t.Fatal(err)
			}
			a.Settle(req.KeyID, req.LeaseID, 50, clock.Now())
			clock.Advance(time.Millisecond)
		}
		if n := len(a.keys); n > 2*61_000 {
			t.Fatalf("with about 61,000 identities in their windows the admitter holds %d keys", n)
		}
		clock.Advance(2 * time.Minute)
		admitOthers(t, a, identities/memSweepStepMax+1)
		forgotten(t, a, identities)
	})

	t.Run("flood", func(t *testing.T) {
		// The clock still: each identity holds a lease until 1,000 more
		// have come. The keys held stay within a few times those in use.
		const inUse = 1000
		clock := &fakeClock{t: start}
		a := NewMemoryAdmitter(nil, clock.Now)
		req := AdmitRequest{Limits: KeyLimits{MaxConcurrent: 2}}
		most := 0
		for i := range identities {
			req.KeyID, req.LeaseID = "id-"+strconv.Itoa(i), "r"
			if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
				t.Fatalf("Admit %s = %+v, %v", req.KeyID, d, err)
			}
			if i >= inUse {
				if err := a.Release(ctx, "id-"+strconv.Itoa(i-inUse), "r"); err != nil {
					t.Fatal(err)
				}
			}
			most = max(most, len(a.keys))
		}
		if most > 3*inUse {
			t.Fatalf("%d identities, %d of them holding a lease at a time: the admitter held up to %d keys, want at most %d",
				identities, inUse, most, 3*inUse)
		}
		for i := identities - inUse; i < identities; i++ {
			if err := a.Release(ctx, "id-"+strconv.Itoa(i), "r"); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(memSweepEvery) // the rest goes over the next pass
		admitOthers(t, a, 3*inUse/memSweepStepMax+1)
		forgotten(t, a, identities)
	})

	t.Run("local quota", func(t *testing.T) {
		// The single binary: a quota's cached usage goes with its key
		// once the store has applied the key's requests, and so does
		// that of a key whose admissions reserved nothing (the store
		// has not applied them yet).
		const n = 20_000
		env := newLocalAdmitEnv(t, start)
		a := env.admit.(*MemoryAdmitter)
		req := AdmitRequest{Quota: 1000, Period: Daily}
		var batch []Entry
		for i := range n {
			req.KeyID, req.LeaseID, req.Reserve = "id-"+strconv.Itoa(i), "r-"+strconv.Itoa(i), int64(10*(i%2))
			if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
				t.Fatalf("Admit %s = %+v, %v", req.KeyID, d, err)
			}
			if req.Reserve == 0 {
				continue
			}
			batch = append(batch, Entry{RequestID: req.LeaseID, KeyID: req.KeyID, Time: start, PromptTokens: 5, Reserved: 10})
			if len(batch) == 500 {
				if _, err := env.store.Apply(ctx, batch); err != nil {
					t.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		if _, err := env.store.Apply(ctx, batch); err != nil {
			t.Fatal(err)
		}
		env.clock.Advance(time.Minute) // the applied tokens leave the TPM window
		admitOthers(t, a, n/memSweepStepMax+1)
		forgotten(t, a, n)
		// Usage read again from the store is the same.
		req.KeyID, req.LeaseID, req.Reserve = "id-7", "r-again", 996
		if d, err := a.Admit(ctx, req); err != nil || d.Allowed || d.Reason != ReasonQuota {
			t.Fatalf("id-7 with 5 of 1000 used, Admit(996) = %+v, %v; want a quota rejection", d, err)
		}
		req.KeyID = "id-8"
		if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
			t.Fatalf("id-8 with none of 1000 used, Admit(996) = %+v, %v; want it admitted", d, err)
		}
	})
}
