package ledger

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func newLocalStore(t *testing.T) DetailedStore {
	t.Helper()
	s, err := OpenLocal(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestLocalStore(t *testing.T) {
	runStoreSuite(t, newLocalStore)
}

func TestLocalStoreDurableAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	e := Entry{RequestID: "r1", KeyID: "a", UserID: "u", Model: "m", Time: at, PromptTokens: 3, CompletionTokens: 4, Reserved: 2}

	s, err := OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddReserved(ctx, "a", 10); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, []Entry{e}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := Totals{PromptTokens: 3, CompletionTokens: 4, TotalTokens: 7, Requests: 1}
	if got, err := s.Usage(ctx, "a", Daily, at); err != nil || got != want {
		t.Fatalf("Usage after reopen = %+v, %v; want %+v", got, err, want)
	}
	if n, err := s.Apply(ctx, []Entry{e}); err != nil || n != 0 {
		t.Fatalf("Apply of a known request after reopen = %d, %v; want 0", n, err)
	}
	if got, err := s.UsageByUser(ctx, "u", Never, at); err != nil || got != want {
		t.Fatalf("UsageByUser after reopen = %+v, %v; want %+v", got, err, want)
	}
	if got, err := s.Reserved(ctx, "a"); err != nil || got != 8 {
		t.Fatalf("Reserved after reopen = %d, %v; want 8", got, err)
	}
}

func TestLocalStoreLockedFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	s, err := OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = OpenLocal(path, WithLockTimeout(100*time.Millisecond))
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second OpenLocal = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second OpenLocal took %s, want about the lock timeout", d)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenLocal(path, WithLockTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatalf("OpenLocal after Close: %v", err)
	}
	s.Close()
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestLocalStorePrunesOldRequestIDs(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	s, err := OpenLocal(filepath.Join(t.TempDir(), "ledger.db"),
		WithClock(clock.Now), WithDedupeRetention(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	old := Entry{RequestID: "old", KeyID: "a", Time: at, PromptTokens: 1}
	recent := Entry{RequestID: "recent", KeyID: "a", Time: at, PromptTokens: 1}
	apply := func(want int, e ...Entry) {
		t.Helper()
		if n, err := s.Apply(ctx, e); err != nil || n != want {
			t.Fatalf("Apply = %d, %v; want %d", n, err, want)
		}
	}
	apply(1, old)
	clock.Advance(47 * time.Hour)
	apply(1, recent)
	apply(0, old, recent) // both still remembered
	clock.Advance(2 * time.Hour)
	apply(0, recent) // runs the prune: "old" is past the retention, "recent" is not
	apply(1, old)    // so "old" counts again: the retention must outlast redelivery
	apply(0, recent)
}

// BenchmarkLocalApply measures a batch of 100 entries as the meter applies
// them to the local ledger: 50 keys, 20 users, one model.
func BenchmarkLocalApply(b *testing.B) {
	ctx := context.Background()
	s, err := OpenLocal(filepath.Join(b.TempDir(), "ledger.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	at := time.Now()
	batch := make([]Entry, 100)
	var seq int64
	b.ReportAllocs()
	for b.Loop() {
		for i := range batch {
			seq++
			batch[i] = Entry{
				RequestID: "req-" + strconv.FormatInt(seq, 10), KeyID: "key-" + strconv.FormatInt(seq%50, 10),
				UserID: "user-" + strconv.FormatInt(seq%20, 10), Model: "qwen2.5-72b", Time: at,
				PromptTokens: 100, CompletionTokens: 50, Reserved: 150,
			}
		}
		if _, err := s.Apply(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}
