package ledger

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// runStoreSuite checks the semantics every store must share. newStore returns
// a fresh, empty store for each subtest.
func runStoreSuite(t *testing.T, newStore func(t *testing.T) DetailedStore) {
	ctx := context.Background()
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) // a Wednesday

	entry := func(rid, key string, p, c int64) Entry {
		return Entry{RequestID: rid, KeyID: key, Model: "qwen", Time: at, PromptTokens: p, CompletionTokens: c}
	}
	mustApply := func(t *testing.T, s Store, want int, entries ...Entry) {
		t.Helper()
		n, err := s.Apply(ctx, entries)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if n != want {
			t.Fatalf("Apply applied %d entries, want %d", n, want)
		}
	}
	wantUsage := func(t *testing.T, s Store, key string, p Period, when time.Time, want Totals) {
		t.Helper()
		got, err := s.Usage(ctx, key, p, when)
		if err != nil {
			t.Fatalf("Usage(%s, %s, %s): %v", key, p, when, err)
		}
		if got != want {
			t.Fatalf("Usage(%s, %s, %s) = %+v, want %+v", key, p, when, got, want)
		}
	}
	totals := func(p, c, n int64) Totals {
		return Totals{PromptTokens: p, CompletionTokens: c, TotalTokens: p + c, Requests: n}
	}

	t.Run("ApplyAndQueryEveryPeriod", func(t *testing.T) {
		s := newStore(t)
		mustApply(t, s, 3, entry("r1", "a", 10, 5), entry("r2", "a", 1, 2), entry("r3", "b", 7, 0))
		for _, p := range Periods {
			wantUsage(t, s, "a", p, at, totals(11, 7, 2))
			wantUsage(t, s, "b", p, at, totals(7, 0, 1))
			wantUsage(t, s, "nobody", p, at, Totals{})
		}
		// Another day, week and month: only the never-reset total sees it.
		later := at.AddDate(0, 1, 0)
		wantUsage(t, s, "a", Daily, later, Totals{})
		wantUsage(t, s, "a", Weekly, later, Totals{})
		wantUsage(t, s, "a", Monthly, later, Totals{})
		wantUsage(t, s, "a", Never, later, totals(11, 7, 2))
	})

	t.Run("IdempotentAcrossBatches", func(t *testing.T) {
		s := newStore(t)
		mustApply(t, s, 1, entry("r1", "a", 10, 5))
		mustApply(t, s, 0, entry("r1", "a", 10, 5))
		mustApply(t, s, 1, entry("r1", "a", 10, 5), entry("r2", "a", 1, 1))
		wantUsage(t, s, "a", Daily, at, totals(11, 6, 2))
	})

	t.Run("IdempotentWithinBatch", func(t *testing.T) {
		s := newStore(t)
		e := entry("r1", "a", 10, 5)
		e.UserID = "u1"
		mustApply(t, s, 1, e, e, e)
		wantUsage(t, s, "a", Monthly, at, totals(10, 5, 1))
		u, err := s.UsageByUser(ctx, "u1", Monthly, at)
		if err != nil || u != totals(10, 5, 1) {
			t.Fatalf("UsageByUser = %+v, %v; want %+v", u, err, totals(10, 5, 1))
		}
	})

	t.Run("IdempotentUnderConcurrentApply", func(t *testing.T) {
		s := newStore(t)
		var batch []Entry
		for i := range 50 {
			e := entry(fmt.Sprintf("r%d", i), fmt.Sprintf("k%d", i%3), 2, 3)
			e.UserID = "u"
			batch = append(batch, e)
		}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			applied int
			errs    []error
		)
		for range 8 {
			wg.Go(func() {
				n, err := s.Apply(ctx, batch)
				mu.Lock()
				defer mu.Unlock()
				applied += n
				if err != nil {
					errs = append(errs, err)
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("Apply: %v", errs)
		}
		if applied != len(batch) {
			t.Fatalf("8 concurrent Apply calls applied %d entries in all, want %d", applied, len(batch))
		}
		all, err := s.UsageAll(ctx, Daily, at)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Totals{"k0": totals(34, 51, 17), "k1": totals(34, 51, 17), "k2": totals(32, 48, 16)}
		if fmt.Sprint(all) != fmt.Sprint(want) {
			t.Fatalf("UsageAll = %v, want %v", all, want)
		}
		u, err := s.UsageByUser(ctx, "u", Daily, at)
		if err != nil || u != totals(100, 150, 50) {
			t.Fatalf("UsageByUser = %+v, %v; want %+v", u, err, totals(100, 150, 50))
		}
	})

	t.Run("PeriodBoundaries", func(t *testing.T) {
		s := newStore(t)
		sunEnd := time.Date(2026, 11, 29, 23, 59, 59, 0, time.UTC)
		monStart := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
		monEnd := time.Date(2026, 11, 30, 23, 59, 59, 999999999, time.UTC)
		decStart := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
		in := func(rid string, when time.Time, p int64) Entry {
			e := entry(rid, "a", p, 0)
			e.Time = when
			return e
		}
		// Entry times in another zone are placed by their UTC instant.
		mustApply(t, s, 4, in("sun", sunEnd.In(time.FixedZone("X", 5*3600)), 1), in("mon", monStart, 10),
			in("monEnd", monEnd, 100), in("dec", decStart.In(time.FixedZone("Y", -8*3600)), 1000))

		wantUsage(t, s, "a", Daily, sunEnd, totals(1, 0, 1))
		wantUsage(t, s, "a", Daily, monStart, totals(110, 0, 2))
		wantUsage(t, s, "a", Daily, decStart, totals(1000, 0, 1))
		// The week starts on Monday: Sunday belongs to the week before.
		wantUsage(t, s, "a", Weekly, sunEnd, totals(1, 0, 1))
		wantUsage(t, s, "a", Weekly, monStart, totals(1110, 0, 3))
		wantUsage(t, s, "a", Weekly, decStart, totals(1110, 0, 3))
		wantUsage(t, s, "a", Monthly, sunEnd, totals(111, 0, 3))
		wantUsage(t, s, "a", Monthly, decStart, totals(1000, 0, 1))
		wantUsage(t, s, "a", Never, sunEnd, totals(1111, 0, 4))
	})

	t.Run("ByModelAndByUser", func(t *testing.T) {
		s := newStore(t)
		mk := func(rid, key, user, model string, p, c int64) Entry {
			e := entry(rid, key, p, c)
			e.UserID, e.Model = user, model
			return e
		}
		mustApply(t, s, 5,
			mk("r1", "a", "alice", "qwen2.5-72b", 10, 1),
			mk("r2", "a", "alice", "llama:3:8b", 20, 2),
			mk("r3", "a", "", "qwen2.5-72b", 30, 3),
			mk("r4", "b", "alice", "qwen2.5-72b", 40, 4),
			mk("r5", "b", "bob", "", 50, 5),
		)
		byModel, err := s.UsageByModel(ctx, "a", Weekly, at)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Totals{"qwen2.5-72b": totals(40, 4, 2), "llama:3:8b": totals(20, 2, 1)}
		if fmt.Sprint(byModel) != fmt.Sprint(want) {
			t.Fatalf("UsageByModel(a) = %v, want %v", byModel, want)
		}
		byModel, err = s.UsageByModel(ctx, "b", Weekly, at)
		if err != nil {
			t.Fatal(err)
		}
		want = map[string]Totals{"qwen2.5-72b": totals(40, 4, 1), "": totals(50, 5, 1)}
		if fmt.Sprint(byModel) != fmt.Sprint(want) {
			t.Fatalf("UsageByModel(b) = %v, want %v", byModel, want)
		}
		if byModel, err = s.UsageByModel(ctx, "a", Daily, at.AddDate(0, 0, 1)); err != nil || len(byModel) != 0 {
			t.Fatalf("UsageByModel next day = %v, %v; want empty", byModel, err)
		}
		for user, want := range map[string]Totals{"alice": totals(70, 7, 3), "bob": totals(50, 5, 1), "carol": {}} {
			got, err := s.UsageByUser(ctx, user, Monthly, at)
			if err != nil || got != want {
				t.Fatalf("UsageByUser(%s) = %+v, %v; want %+v", user, got, err, want)
			}
		}
	})

	t.Run("ReservationRelease", func(t *testing.T) {
		s := newStore(t)
		wantReserved := func(t *testing.T, key string, want int64) {
			t.Helper()
			got, err := s.Reserved(ctx, key)
			if err != nil || got != want {
				t.Fatalf("Reserved(%s) = %d, %v; want %d", key, got, err, want)
			}
		}
		wantReserved(t, "a", 0)
		if err := s.AddReserved(ctx, "a", 100); err != nil {
			t.Fatal(err)
		}
		wantReserved(t, "a", 100)
		e := entry("r1", "a", 10, 5)
		e.Reserved = 30
		mustApply(t, s, 1, e)
		wantReserved(t, "a", 70)
		mustApply(t, s, 0, e) // a redelivery releases nothing
		wantReserved(t, "a", 70)
		big := entry("r2", "a", 1, 1)
		big.Reserved = 500
		mustApply(t, s, 1, big)
		wantReserved(t, "a", 0)
		if err := s.AddReserved(ctx, "a", -10); err != nil {
			t.Fatal(err)
		}
		wantReserved(t, "a", 0)
		if err := s.AddReserved(ctx, "a", 5); err != nil {
			t.Fatal(err)
		}
		wantReserved(t, "a", 5)
		// An entry for a key with nothing reserved leaves it at zero.
		other := entry("r3", "b", 1, 1)
		other.Reserved = 7
		mustApply(t, s, 1, other)
		wantReserved(t, "b", 0)
	})

	t.Run("UsageAllListsEveryKey", func(t *testing.T) {
		s := newStore(t)
		var batch []Entry
		want := map[string]Totals{}
		for i := range 20 {
			key := fmt.Sprintf("key-%02d", i)
			batch = append(batch, entry("r"+key, key, int64(i), 1))
			want[key] = totals(int64(i), 1, 1)
		}
		old := entry("old", "key-old", 5, 5)
		old.Time = at.AddDate(0, 0, -1)
		batch = append(batch, old)
		mustApply(t, s, len(batch), batch...)
		got, err := s.UsageAll(ctx, Daily, at)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("UsageAll(daily) = %v, want %v", got, want)
		}
		got, err = s.UsageAll(ctx, Monthly, at)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 21 || got["key-old"] != totals(5, 5, 1) {
			t.Fatalf("UsageAll(monthly) = %v, want 21 keys with key-old", got)
		}
		if got, err = s.UsageAll(ctx, Daily, at.AddDate(1, 0, 0)); err != nil || len(got) != 0 {
			t.Fatalf("UsageAll a year later = %v, %v; want empty", got, err)
		}
	})

	t.Run("InvalidEntryRejectsBatch", func(t *testing.T) {
		s := newStore(t)
		for name, bad := range map[string]Entry{
			"no request id": {KeyID: "a", Time: at},
			"no key id":     {RequestID: "x", Time: at},
			"no time":       {RequestID: "x", KeyID: "a"},
			// Counts beyond the bound: the Redis store would round them
			// (Lua doubles) or fail HINCRBY on every retry.
			"prompt above the bound":     entry("x", "a", events.MaxTokenCount+1, 0),
			"completion above the bound": entry("x", "a", 0, 1e17),
			"reserved above the bound":   {RequestID: "x", KeyID: "a", Time: at, Reserved: 1 << 62},
			"negative count":             entry("x", "a", -1, 0),
		} {
			n, err := s.Apply(ctx, []Entry{entry("ok", "a", 1, 1), bad})
			if !errors.Is(err, ErrInvalidEntry) || n != 0 {
				t.Fatalf("%s: Apply = %d, %v; want 0, ErrInvalidEntry", name, n, err)
			}
		}
		wantUsage(t, s, "a", Never, at, Totals{})
		// At the bound, every store counts exactly.
		mustApply(t, s, 3, entry("m1", "a", events.MaxTokenCount, events.MaxTokenCount),
			entry("m2", "a", events.MaxTokenCount, 0), entry("m3", "a", 0, events.MaxTokenCount))
		wantUsage(t, s, "a", Never, at, totals(2*events.MaxTokenCount, 2*events.MaxTokenCount, 3))
		if n, err := s.Apply(ctx, nil); err != nil || n != 0 {
			t.Fatalf("Apply(nil) = %d, %v", n, err)
		}
	})
}
