package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// TestLocalStoreDamage: a damaged ledger file gives errors wrapping
// ErrDamaged that name the file, where bbolt panics: at open (a file cut
// short) or on the first read or write that meets a garbled page, so that
// the meter logs its failed writes instead of its goroutine dying.
func TestLocalStoreDamage(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	build := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "ledger.db")
		s, err := OpenLocal(path)
		if err != nil {
			t.Fatal(err)
		}
		var batch []Entry
		for i := range 2000 {
			batch = append(batch, Entry{RequestID: "r" + strconv.Itoa(i), KeyID: "k" + strconv.Itoa(i%50), UserID: "u", Model: "m", Time: at, PromptTokens: 3, CompletionTokens: 4})
		}
		if _, err := s.Apply(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	use := func(path string) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		s, err := OpenLocal(path)
		if err != nil {
			return err
		}
		defer s.Close()
		if _, err := s.UsageAll(ctx, Daily, at); err != nil {
			return err
		}
		_, err = s.Apply(ctx, []Entry{{RequestID: "r1", KeyID: "k1", Model: "m", Time: at, PromptTokens: 1}})
		return err
	}
	t.Run("cut short", func(t *testing.T) {
		path := build(t)
		if err := os.Truncate(path, 32768); err != nil {
			t.Fatal(err)
		}
		if err := use(path); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) {
			t.Fatalf("error %v; want ErrDamaged naming the file", err)
		}
	})
	t.Run("garbled pages", func(t *testing.T) {
		path := build(t)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		junk := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1024)
		for off := int64(2 * 4096); off+4096 <= st.Size(); off += 4096 {
			if _, err := f.WriteAt(junk, off); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		if err := use(path); !errors.Is(err, ErrDamaged) {
			t.Fatalf("error %v; want ErrDamaged", err)
		}
	})
	t.Run("meta pages zeroed", func(t *testing.T) {
		// bbolt's own error at open (invalid database), which said
		// nothing of what to do.
		path := build(t)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(make([]byte, 2*4096), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := use(path); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "move the file aside") {
			t.Fatalf("error %v; want ErrDamaged saying what to do", err)
		}
	})
}

// TestLocalStoreClosed: a store used after Close says so with ErrClosed,
// which the meter takes for the process stopping, not a failed write.
func TestLocalStoreClosed(t *testing.T) {
	s, err := OpenLocal(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	if _, err := s.Apply(context.Background(), []Entry{{RequestID: "r1", KeyID: "k1", Model: "m", Time: at, PromptTokens: 1}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: %v, want ErrClosed", err)
	}
	if _, err := s.UsageAll(context.Background(), Daily, at); !errors.Is(err, ErrClosed) {
		t.Fatalf("UsageAll after Close: %v, want ErrClosed", err)
	}
}
