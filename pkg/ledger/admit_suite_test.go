package ledger

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// admitEnv is an admitter under test, the store that settles its
// reservations, and the clock both decide by.
type admitEnv struct {
	admit Admitter
	store DetailedStore
	clock *fakeClock
}

// runAdmitSuite checks the admission semantics every store must share.
// newEnv returns a fresh, empty environment whose clock is at start.
func runAdmitSuite(t *testing.T, newEnv func(t *testing.T, start time.Time) admitEnv) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var seq atomic.Int64
	newID := func() string { return fmt.Sprintf("req-%d", seq.Add(1)) }

	admit := func(t *testing.T, env admitEnv, req AdmitRequest) Decision {
		t.Helper()
		if req.LeaseID == "" {
			req.LeaseID = newID()
		}
		d, err := env.admit.Admit(ctx, req)
		if err != nil {
			t.Fatalf("Admit: %v", err)
		}
		return d
	}
	// concurrently runs n admissions of req from workers goroutines and
	// returns the lease ids admitted.
	concurrently := func(t *testing.T, env admitEnv, workers, n int, req AdmitRequest) []string {
		t.Helper()
		var (
			mu      sync.Mutex
			allowed []string
			wg      sync.WaitGroup
			next    atomic.Int64
		)
		for range workers {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					r := req
					r.LeaseID = newID()
					d, err := env.admit.Admit(ctx, r)
					if err != nil {
						t.Error(err)
						return
					}
					if d.Allowed {
						mu.Lock()
						allowed = append(allowed, r.LeaseID)
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		return allowed
	}
	wantReserved := func(t *testing.T, env admitEnv, key string, want int64) {
		t.Helper()
		got, err := env.store.Reserved(ctx, key)
		if err != nil || got != want {
			t.Fatalf("Reserved(%s) = %d, %v; want %d", key, got, err, want)
		}
	}
	apply := func(t *testing.T, env admitEnv, entries ...Entry) {
		t.Helper()
		if _, err := env.store.Apply(ctx, entries); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}

	t.Run("RPMExactUnderConcurrency", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{RPM: 600}}
		total := 0
		// A simulated minute: 8 admitters make 40 attempts every second.
		for s := range 60 {
			env.clock.Set(t0.Add(time.Duration(s) * time.Second))
			total += len(concurrently(t, env, 8, 40, req))
		}
		if total != 600 {
			t.Fatalf("admitted %d requests in a minute, want exactly 600", total)
		}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonKeyRPM || d.LimitRequests != 600 || d.RemainingRequests != 0 {
			t.Fatalf("601st request: %+v; want a key_rpm rejection with limit 600, 0 remaining", d)
		}
		if want := time.Second; d.RetryAfter != want {
			t.Fatalf("RetryAfter = %s, want %s (the first admissions leave the window at t0+60s)", d.RetryAfter, want)
		}
		// At t0+60s the 40 admissions of t0 leave the window: exactly 40
		// more fit.
		env.clock.Set(t0.Add(time.Minute))
		if n := len(concurrently(t, env, 8, 100, req)); n != 40 {
			t.Fatalf("admitted %d at t0+60s, want 40", n)
		}
	})

	// A window holding more admissions than the limit (lowered by a
	// reload) frees a slot only when all but limit-1 of them have left:
	// Retry-After says when, so a client that waits it is admitted.
	t.Run("RPMRetryAfterLoweredLimit", func(t *testing.T) {
		env := newEnv(t, t0)
		for s := range 10 {
			env.clock.Set(t0.Add(time.Duration(s) * time.Second))
			if d := admit(t, env, AdmitRequest{KeyID: "k", Limits: KeyLimits{RPM: 10}}); !d.Allowed {
				t.Fatalf("admission %d of 10: %+v", s+1, d)
			}
		}
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{RPM: 5}}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonKeyRPM || d.RetryAfter != 56*time.Second || d.ResetRequests != d.RetryAfter {
			t.Fatalf("10 in the window, limit 5: %+v; want key_rpm, retry and reset after 56s (when the admission of t0+5s leaves)", d)
		}
		env.clock.Advance(d.RetryAfter - time.Millisecond)
		if d := admit(t, env, req); d.Allowed {
			t.Fatalf("before Retry-After: %+v; want refused", d)
		}
		env.clock.Advance(time.Millisecond)
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("after Retry-After: %+v; want admitted", d)
		}
	})

	t.Run("KeyRPSWithBurst", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{RPS: 20}}
		total := len(concurrently(t, env, 8, 100, req)) // the burst
		for i := 1; i <= 20; i++ {
			env.clock.Set(t0.Add(time.Duration(i) * 50 * time.Millisecond))
			total += len(concurrently(t, env, 4, 5, req))
		}
		if total != 40 {
			t.Fatalf("admitted %d over 1s at 20 rps, want 40 (a burst of 20, then 20)", total)
		}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonKeyRPS || d.RetryAfter != 50*time.Millisecond {
			t.Fatalf("over the rate: %+v; want key_rps, retry after 50ms", d)
		}
	})

	// A rate so low that its interval overflows a time.Duration is still
	// a limit (it was none: the interval wrapped around to 1 ns).
	t.Run("TinyRatesStillLimit", func(t *testing.T) {
		env := newEnv(t, t0)
		for _, c := range []struct {
			req    AdmitRequest
			reason string
		}{
			{AdmitRequest{KeyID: "k", Limits: KeyLimits{RPS: 1e-10}}, ReasonKeyRPS},
			{AdmitRequest{KeyID: "g1", Global: GlobalLimit{RPS: 1e-300, Burst: 1 << 40}}, ReasonGlobalRPS},
		} {
			n := len(concurrently(t, env, 4, 20, c.req))
			if n == 0 || n == 20 {
				t.Fatalf("%+v: admitted %d of 20", c.req, n)
			}
			env.clock.Advance(24 * time.Hour)
			d := admit(t, env, c.req)
			if d.Allowed || d.Reason != c.reason || d.RetryAfter < 365*24*time.Hour {
				t.Fatalf("%+v a day later: %+v; want %s, retry after years", c.req, d, c.reason)
			}
		}
	})

	t.Run("GlobalRPSAcrossKeys", func(t *testing.T) {
		env := newEnv(t, t0)
		g := GlobalLimit{RPS: 10, Burst: 5}
		n := 0
		for i := range 10 {
			if admit(t, env, AdmitRequest{KeyID: fmt.Sprintf("k%d", i%3), Global: g}).Allowed {
				n++
			}
		}
		if n != 5 {
			t.Fatalf("admitted %d, want the burst of 5", n)
		}
		d := admit(t, env, AdmitRequest{KeyID: "k9", Global: g})
		if d.Allowed || d.Reason != ReasonGlobalRPS || d.RetryAfter != 100*time.Millisecond {
			t.Fatalf("over the global rate: %+v; want global_rps, retry after 100ms", d)
		}
		env.clock.Advance(100 * time.Millisecond)
		if !admit(t, env, AdmitRequest{KeyID: "k9", Global: g}).Allowed {
			t.Fatal("not admitted after one emission interval")
		}
	})

	t.Run("MaxConcurrent", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{MaxConcurrent: 5}}
		held := concurrently(t, env, 50, 50, req)
		if len(held) != 5 {
			t.Fatalf("admitted %d of 50 concurrent requests, want 5", len(held))
		}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonConcurrency || d.RetryAfter <= 0 {
			t.Fatalf("6th: %+v; want a concurrency rejection with a retry", d)
		}
		if err := env.admit.Release(ctx, "k", held[0]); err != nil {
			t.Fatal(err)
		}
		if err := env.admit.Release(ctx, "k", held[0]); err != nil { // twice is harmless
			t.Fatal(err)
		}
		if n := len(concurrently(t, env, 10, 10, req)); n != 1 {
			t.Fatalf("after one release admitted %d, want 1", n)
		}
	})

	t.Run("LeasesExpire", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{MaxConcurrent: 2}, LeaseTTL: 5 * time.Second}
		if n := len(concurrently(t, env, 4, 4, req)); n != 2 {
			t.Fatalf("admitted %d, want 2", n)
		}
		// The holders die without releasing.
		env.clock.Advance(4 * time.Second)
		if admit(t, env, req).Allowed {
			t.Fatal("admitted while both leases are live")
		}
		env.clock.Advance(time.Second)
		if n := len(concurrently(t, env, 4, 4, req)); n != 2 {
			t.Fatalf("after the lease TTL admitted %d, want 2", n)
		}
	})

	t.Run("RenewKeepsLease", func(t *testing.T) {
		env := newEnv(t, t0)
		r, ok := env.admit.(LeaseRenewer)
		if !ok {
			t.Fatal("the admitter cannot renew leases")
		}
		req := AdmitRequest{KeyID: "k", LeaseID: "long", Limits: KeyLimits{MaxConcurrent: 1}, LeaseTTL: 5 * time.Second}
		if !admit(t, env, req).Allowed {
			t.Fatal("first rejected")
		}
		env.clock.Advance(4 * time.Second)
		if held, err := r.Renew(ctx, "k", "long", 5*time.Second); err != nil || !held {
			t.Fatalf("Renew = %v, %v; want held", held, err)
		}
		env.clock.Advance(4 * time.Second) // past the first TTL, within the renewed one
		if admit(t, env, AdmitRequest{KeyID: "k", Limits: req.Limits}).Allowed {
			t.Fatal("admitted while the renewed lease is held")
		}
		env.clock.Advance(time.Second)
		if held, err := r.Renew(ctx, "k", "long", 5*time.Second); err != nil || held {
			t.Fatalf("Renew of an expired lease = %v, %v; want not held", held, err)
		}
		if !admit(t, env, AdmitRequest{KeyID: "k", Limits: req.Limits}).Allowed {
			t.Fatal("not admitted after the renewed lease expired")
		}
	})

	t.Run("RenewKeepsReservation", func(t *testing.T) {
		// A stream that runs past the reservation TTL keeps its tokens
		// reserved while its gateway renews it, without a concurrency
		// limit (no lease) and with one.
		for _, maxc := range []int64{0, 5} {
			env := newEnv(t, t0)
			r := env.admit.(LeaseRenewer)
			req := AdmitRequest{KeyID: "k", Quota: 10000, Period: Daily, Reserve: 5000,
				Limits: KeyLimits{MaxConcurrent: maxc}, LeaseTTL: DefaultLeaseTTL}
			for _, id := range []string{"long-a", "long-b"} {
				req.LeaseID = id
				if !admit(t, env, req).Allowed {
					t.Fatalf("max_concurrent %d: %s rejected", maxc, id)
				}
			}
			for range 3 { // 15 minutes, renewed every 5
				env.clock.Advance(DefaultLeaseTTL / 2)
				for _, id := range []string{"long-a", "long-b"} {
					if held, err := r.Renew(ctx, "k", id, DefaultLeaseTTL); err != nil || !held {
						t.Fatalf("max_concurrent %d: Renew(%s) = %v, %v; want held", maxc, id, held, err)
					}
				}
			}
			req.LeaseID = ""
			if d := admit(t, env, req); d.Allowed || d.Reason != ReasonQuota {
				t.Fatalf("max_concurrent %d: admitted past the quota while two renewed reservations hold it: %+v", maxc, d)
			}
			wantReserved(t, env, "k", 10000)
			// Renewing never brings back an expired reservation.
			env.clock.Advance(DefaultReservationTTL + time.Second)
			if held, err := r.Renew(ctx, "k", "long-a", DefaultLeaseTTL); err != nil || held {
				t.Fatalf("max_concurrent %d: Renew after both TTLs = %v, %v; want not held", maxc, held, err)
			}
			if !admit(t, env, req).Allowed {
				t.Fatalf("max_concurrent %d: not admitted once the reservations expired", maxc)
			}
		}
	})

	t.Run("QuotaWithConcurrentReservations", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Quota: 10000, Period: Daily, Reserve: 300}
		held := concurrently(t, env, 100, 100, req)
		if len(held) != 33 {
			t.Fatalf("admitted %d requests reserving 300 of a 10000 quota, want 33", len(held))
		}
		wantReserved(t, env, "k", 33*300)
		// Nothing is used yet: only the requests in flight hold the
		// quota, so the refusal says so and asks for a retry in a second,
		// not at the period's end.
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonQuota || !d.HeldByReservations || d.RetryAfter != time.Second {
			t.Fatalf("34th: %+v; want a quota rejection held by reservations, retry after 1s", d)
		}
		if d.LimitTokens != 10000 || d.RemainingTokens != 100 {
			t.Fatalf("token figures %d/%d, want 10000/100", d.LimitTokens, d.RemainingTokens)
		}
		// Each request used 250 tokens: applying the events releases the
		// reservations and counts the real tokens.
		var entries []Entry
		for _, id := range held {
			entries = append(entries, Entry{RequestID: id, KeyID: "k", Time: t0, PromptTokens: 200, CompletionTokens: 50, Reserved: 300})
		}
		apply(t, env, entries...)
		wantReserved(t, env, "k", 0)
		// 33×250 = 8250 used: 5 more of 300 fit (9750), the 6th does not.
		held = concurrently(t, env, 10, 10, req)
		if len(held) != 5 {
			t.Fatalf("after settling admitted %d, want 5", len(held))
		}
		entries = entries[:0]
		for _, id := range held {
			entries = append(entries, Entry{RequestID: id, KeyID: "k", Time: t0, PromptTokens: 300, Reserved: 300})
		}
		apply(t, env, entries...)
		// These used all they reserved, 9750 in all: 300 more do not fit
		// whatever settles; the quota is used up for such a request
		// until midnight UTC.
		d = admit(t, env, req)
		if d.Allowed || d.Reason != ReasonQuota || d.HeldByReservations || d.RetryAfter != 12*time.Hour {
			t.Fatalf("with 9750 used: %+v; want a quota rejection retrying at midnight UTC", d)
		}
	})

	t.Run("ReservationSettledByApply", func(t *testing.T) {
		env := newEnv(t, t0)
		req := func(reserve int64) AdmitRequest {
			return AdmitRequest{KeyID: "k", Limits: KeyLimits{TPM: 1000}, Reserve: reserve}
		}
		first := req(600)
		first.LeaseID = "r-first"
		if !admit(t, env, first).Allowed {
			t.Fatal("first request rejected")
		}
		if d := admit(t, env, req(600)); d.Allowed || d.Reason != ReasonTPM {
			t.Fatalf("second 600: %+v; want a tpm rejection (600 reserved)", d)
		}
		wantReserved(t, env, "k", 600)
		apply(t, env, Entry{RequestID: "r-first", KeyID: "k", Time: t0, PromptTokens: 150, CompletionTokens: 50, Reserved: 600})
		wantReserved(t, env, "k", 0)
		apply(t, env, Entry{RequestID: "r-first", KeyID: "k", Time: t0, PromptTokens: 150, CompletionTokens: 50, Reserved: 600})
		wantReserved(t, env, "k", 0) // a redelivery changes nothing
		// 200 real tokens in the window: 800 more fit, not 801.
		d := admit(t, env, req(801))
		if d.Allowed || d.Reason != ReasonTPM || d.RemainingTokens != 800 {
			t.Fatalf("801 after 200 used: %+v; want a tpm rejection with 800 remaining", d)
		}
		if d.RetryAfter != time.Minute {
			t.Fatalf("RetryAfter = %s, want 1m (the 200 leave the window at t0+60s)", d.RetryAfter)
		}
		if d := admit(t, env, req(800)); !d.Allowed || d.RemainingTokens != 0 {
			t.Fatalf("800 after 200 used: %+v; want admitted, 0 remaining", d)
		}
	})

	// One batch settles each entry by its own reservation: admitted
	// requests release what they reserved at admission, an entry the
	// admitter never saw releases its Reserved from the store's counter,
	// and a repeat within the batch settles nothing twice.
	t.Run("MixedBatchSettlesEach", func(t *testing.T) {
		env := newEnv(t, t0)
		for _, r := range []struct {
			id      string
			reserve int64
		}{{"m1", 300}, {"m2", 200}} {
			req := AdmitRequest{KeyID: "k", LeaseID: r.id, Limits: KeyLimits{TPM: 10000}, Reserve: r.reserve}
			if !admit(t, env, req).Allowed {
				t.Fatalf("%s rejected", r.id)
			}
		}
		// Reserved outside the admitter (the counter): 150, of which m3
		// releases its 50.
		if err := env.store.AddReserved(ctx, "k", 150); err != nil {
			t.Fatal(err)
		}
		wantReserved(t, env, "k", 650)
		e1 := Entry{RequestID: "m1", KeyID: "k", Model: "a", Time: t0, PromptTokens: 100, CompletionTokens: 20, Reserved: 300}
		e2 := Entry{RequestID: "m2", KeyID: "k", Model: "b", Time: t0.Add(time.Second), PromptTokens: 10, CompletionTokens: 5, Reserved: 200}
		e3 := Entry{RequestID: "m3", KeyID: "k", Model: "a", Time: t0, PromptTokens: 1, CompletionTokens: 1, Reserved: 50}
		n, err := env.store.Apply(ctx, []Entry{e1, e2, e1, e3})
		if err != nil || n != 3 {
			t.Fatalf("Apply = %d, %v; want 3 new entries", n, err)
		}
		wantReserved(t, env, "k", 100)
		tot, err := env.store.Usage(ctx, "k", Monthly, t0)
		if err != nil || tot != (Totals{PromptTokens: 111, CompletionTokens: 26, TotalTokens: 137, Requests: 3}) {
			t.Fatalf("Usage = %+v, %v; want 111 prompt, 26 completion, 3 requests", tot, err)
		}
		// With the counter emptied, the window holds the 137 applied
		// tokens and nothing else: 9,863 more fit.
		if err := env.store.AddReserved(ctx, "k", -100); err != nil {
			t.Fatal(err)
		}
		d := admit(t, env, AdmitRequest{KeyID: "k", Limits: KeyLimits{TPM: 10000}, Reserve: 9864})
		if d.Allowed || d.RemainingTokens != 9863 {
			t.Fatalf("9,864 after 137 applied: %+v; want a rejection with 9,863 remaining", d)
		}
	})

	t.Run("LostReservationExpires", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Quota: 1000, Period: Monthly, Reserve: 600}
		if !admit(t, env, req).Allowed {
			t.Fatal("first rejected")
		}
		// Its event never reaches the meter.
		env.clock.Advance(DefaultReservationTTL - time.Second)
		if admit(t, env, req).Allowed {
			t.Fatal("admitted while the first reservation is outstanding")
		}
		env.clock.Advance(time.Second)
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("after the reservation TTL: %+v; want admitted", d)
		}
	})

	t.Run("TPMSlidingWindow", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{TPM: 1000}}
		// 400 tokens at t0, 400 at t0+30s, applied without reservations.
		apply(t, env, Entry{RequestID: "a", KeyID: "k", Time: t0, PromptTokens: 400})
		apply(t, env, Entry{RequestID: "b", KeyID: "k", Time: t0.Add(30 * time.Second), PromptTokens: 400})
		env.clock.Set(t0.Add(59 * time.Second))
		req.Reserve = 201
		if d := admit(t, env, req); d.Allowed || d.Reason != ReasonTPM || d.RetryAfter != time.Second {
			t.Fatalf("at t0+59s: %+v; want tpm, retry after 1s", d)
		}
		env.clock.Set(t0.Add(60 * time.Second)) // the first 400 leave
		req.Reserve = 600
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("at t0+60s: %+v; want admitted (400 + 600)", d)
		}
		req.Reserve = 1
		if d := admit(t, env, req); d.Allowed {
			t.Fatalf("window full: %+v; want rejected", d)
		}
	})

	t.Run("TPMCountsARequestWhenItEnds", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", LeaseID: "long", Limits: KeyLimits{TPM: 1000}, Reserve: 1000}
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("first: %+v", d)
		}
		req.LeaseID = ""
		// It streams for 90 s and ends with 1000 tokens: they count in
		// the window from its end, not from its arrival, 90 s before.
		env.clock.Set(t0.Add(90 * time.Second))
		apply(t, env, Entry{RequestID: "long", KeyID: "k", Time: t0, Ended: t0.Add(90 * time.Second), CompletionTokens: 1000, Reserved: 1000})
		if d := admit(t, env, req); d.Allowed || d.Reason != ReasonTPM {
			t.Fatalf("right after a long request used 1000 tokens: %+v; want tpm", d)
		}
		env.clock.Set(t0.Add(150 * time.Second))
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("60 s after its end: %+v; want admitted", d)
		}
	})

	t.Run("LoneRequestLargerThanLimit", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{TPM: 1000}, Quota: 2000, Reserve: 4096}
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("a lone request larger than the limits: %+v; want admitted", d)
		}
		if d := admit(t, env, req); d.Allowed {
			t.Fatalf("a second one: %+v; want rejected", d)
		}
	})

	// A request larger than the whole TPM is admitted once the window is
	// below the limit with nothing outstanding: its Retry-After is when
	// that happens, so a client that waits it is admitted, not refused
	// again every second until then.
	t.Run("LoneRequestLargerThanTPMRetriesWhenWindowFrees", func(t *testing.T) {
		env := newEnv(t, t0)
		apply(t, env, Entry{RequestID: "a", KeyID: "k", Time: t0, PromptTokens: 600})
		apply(t, env, Entry{RequestID: "b", KeyID: "k", Time: t0.Add(10 * time.Second), PromptTokens: 400})
		env.clock.Set(t0.Add(20 * time.Second))
		req := AdmitRequest{KeyID: "k", Limits: KeyLimits{TPM: 1000}, Reserve: 4096}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonTPM || d.RetryAfter != 40*time.Second {
			t.Fatalf("with the window full: %+v; want tpm, retry after 40s (when the 600 of t0 leave)", d)
		}
		env.clock.Advance(d.RetryAfter - time.Millisecond)
		if d := admit(t, env, req); d.Allowed {
			t.Fatalf("before Retry-After: %+v; want refused", d)
		}
		env.clock.Advance(time.Millisecond)
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("after Retry-After: %+v; want admitted", d)
		}
		// Now its reservation is outstanding: only its settling frees
		// the window for another such request.
		if d := admit(t, env, req); d.Allowed || d.RetryAfter != time.Second {
			t.Fatalf("a second one: %+v; want refused, retry after 1s", d)
		}
	})

	t.Run("DailyQuotaResetsAtUTCMidnight", func(t *testing.T) {
		late := time.Date(2026, 11, 25, 23, 59, 30, 0, time.UTC)
		env := newEnv(t, late)
		apply(t, env, Entry{RequestID: "used", KeyID: "k", Time: late, PromptTokens: 1000})
		req := AdmitRequest{KeyID: "k", Quota: 1000, Period: Daily, Reserve: 10}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonQuota || d.RetryAfter != 30*time.Second {
			t.Fatalf("quota used up at 23:59:30: %+v; want quota, retry after 30s", d)
		}
		env.clock.Set(time.Date(2026, 11, 25, 23, 59, 59, 999999000, time.UTC))
		if admit(t, env, req).Allowed {
			t.Fatal("admitted before midnight")
		}
		env.clock.Set(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC))
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("at midnight UTC: %+v; want admitted", d)
		}
		// A never-resetting quota gives no retry time.
		never := AdmitRequest{KeyID: "k", Quota: 1000, Period: Never, Reserve: 10}
		if d := admit(t, env, never); d.Allowed || d.RetryAfter != 0 {
			t.Fatalf("never-resetting quota used up: %+v; want rejected without a retry time", d)
		}
	})

	// A request's usage is counted in the period it arrived in (its
	// event's timestamp), so its admission, which may run after that
	// period ended (a slow body or key look-up across midnight), checks
	// that period's quota too: it neither slips past a used-up day nor
	// takes from the next one.
	t.Run("QuotaOfThePeriodTheRequestArrivedIn", func(t *testing.T) {
		before := time.Date(2026, 11, 25, 23, 59, 59, 0, time.UTC)
		env := newEnv(t, before)
		apply(t, env, Entry{RequestID: "used", KeyID: "k", Time: before, PromptTokens: 1000})
		env.clock.Set(time.Date(2026, 11, 26, 0, 0, 2, 0, time.UTC))
		req := AdmitRequest{KeyID: "k", Quota: 1000, Period: Daily, Reserve: 10, At: before.Add(500 * time.Millisecond)}
		d := admit(t, env, req)
		if d.Allowed || d.Reason != ReasonQuota {
			t.Fatalf("arrived 23:59:59.5 with the day used up, admitted at 00:00:02: %+v; want a quota rejection", d)
		}
		if d.RetryAfter <= 0 || d.RetryAfter > time.Millisecond {
			t.Fatalf("RetryAfter = %s; want a retry at once (the new day has begun)", d.RetryAfter)
		}
		req.At = time.Date(2026, 11, 26, 0, 0, 1, 0, time.UTC)
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("arrived 00:00:01: %+v; want admitted against the new day", d)
		}
	})

	t.Run("RejectionLeavesNoTrace", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{
			KeyID: "k", Global: GlobalLimit{RPS: 1, Burst: 2},
			Limits: KeyLimits{RPS: 2, RPM: 2, TPM: 100, MaxConcurrent: 1}, Reserve: 10,
		}
		a := req
		a.LeaseID = "A"
		if d := admit(t, env, a); !d.Allowed {
			t.Fatalf("A: %+v", d)
		}
		// B passes the rates and fails on concurrency: it must take no
		// global or key rate token, no RPM slot and no reservation.
		if d := admit(t, env, req); d.Allowed || d.Reason != ReasonConcurrency {
			t.Fatalf("B: %+v; want a concurrency rejection", d)
		}
		wantReserved(t, env, "k", 10)
		if err := env.admit.Release(ctx, "k", "A"); err != nil {
			t.Fatal(err)
		}
		if d := admit(t, env, req); !d.Allowed {
			t.Fatalf("C after A's release: %+v; want admitted (B took nothing)", d)
		}
		wantReserved(t, env, "k", 20)
		// A quota rejection after every rate passed takes nothing either.
		q := AdmitRequest{KeyID: "q", Limits: KeyLimits{RPM: 1}, Quota: 100, Reserve: 60}
		if !admit(t, env, q).Allowed {
			t.Fatal("first quota request rejected")
		}
		q.Limits.RPM = 2
		if d := admit(t, env, q); d.Allowed || d.Reason != ReasonQuota {
			t.Fatalf("second: %+v; want quota", d)
		}
		q.Reserve = 40
		if d := admit(t, env, q); !d.Allowed {
			t.Fatalf("third: %+v; want admitted (the quota rejection took no RPM slot)", d)
		}
	})

	t.Run("ZeroLimitsEnforceNothing", func(t *testing.T) {
		env := newEnv(t, t0)
		req := AdmitRequest{KeyID: "k", Reserve: 1 << 40}
		if n := len(concurrently(t, env, 8, 200, req)); n != 200 {
			t.Fatalf("admitted %d of 200 without limits", n)
		}
		wantReserved(t, env, "k", 0)
	})
}
