// Package ledger holds the semantics of LLMProxy's token ledger: usage per key
// and period, applied idempotently from RequestCompleted events, and the
// Store interface with its two implementations (Redis for many processes, a
// durable local file for the single binary). The same test suite runs
// against both stores.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// Period is a quota reset period. Period boundaries are in UTC.
type Period string

const (
	Daily   Period = "daily"
	Weekly  Period = "weekly"
	Monthly Period = "monthly"
	Never   Period = "never"
)

// Periods lists every period a usage entry is counted in.
var Periods = []Period{Daily, Weekly, Monthly, Never}

// ParsePeriod parses a quota_reset_period value ("" means monthly).
func ParsePeriod(s string) (Period, error) {
	switch Period(s) {
	case Daily, Weekly, Monthly, Never:
		return Period(s), nil
	case "":
		return Monthly, nil
	}
	return "", fmt.Errorf("unknown period %q (want daily, weekly, monthly or never)", s)
}

// PeriodID names the period of kind p that contains t, e.g. "d2026-11-25",
// "w2026-11-23" (the Monday that starts the ISO week), "m2026-11", "all".
func PeriodID(p Period, t time.Time) string {
	t = t.UTC()
	switch p {
	case Daily:
		return "d" + t.Format("2006-01-02")
	case Weekly:
		return "w" + WeekStart(t).Format("2006-01-02")
	case Monthly:
		return "m" + t.Format("2006-01")
	default:
		return "all"
	}
}

// WeekStart returns the Monday 00:00 UTC that starts t's week.
func WeekStart(t time.Time) time.Time {
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	offset := (int(day.Weekday()) + 6) % 7 // Monday = 0
	return day.AddDate(0, 0, -offset)
}

// PeriodEnd returns when the period of kind p that contains t ends (the zero
// time for Never).
func PeriodEnd(p Period, t time.Time) time.Time {
	t = t.UTC()
	switch p {
	case Daily:
		return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
	case Weekly:
		return WeekStart(t).AddDate(0, 0, 7)
	case Monthly:
		return time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Time{}
}

// Entry is what the ledger records of one completed request.
type Entry struct {
	RequestID string
	KeyID     string
	UserID    string
	Model     string
	Time      time.Time
	// Ended is when the request ended: its tokens count in the key's TPM
	// window at this second, so that a request longer than the window
	// counts in it when its tokens were used, not at its arrival, by then
	// out of the window. Zero: Time.
	Ended            time.Time
	PromptTokens     int64
	CompletionTokens int64
	// Reserved is the number of tokens reserved at admission for this
	// request; applying the entry releases the reservation.
	Reserved int64
}

// tpmTime is when e's tokens count in the TPM window.
func (e Entry) tpmTime() time.Time {
	if e.Ended.IsZero() {
		return e.Time
	}
	return e.Ended
}

// ErrInvalidEntry reports an entry a store cannot record: it lacks the
// request id that makes Apply idempotent, the key id, or the time that picks
// its periods, or a count of it is negative or above events.MaxTokenCount.
// Retrying such an entry never succeeds.
var ErrInvalidEntry = errors.New("invalid ledger entry")

// Validate reports whether e can be applied; its error wraps ErrInvalidEntry.
func (e Entry) Validate() error {
	switch {
	case e.RequestID == "":
		return fmt.Errorf("%w: empty request id", ErrInvalidEntry)
	case e.KeyID == "":
		return fmt.Errorf("%w: request %s: empty key id", ErrInvalidEntry, e.RequestID)
	case e.Time.IsZero():
		return fmt.Errorf("%w: request %s: zero time", ErrInvalidEntry, e.RequestID)
	case !validCount(e.PromptTokens):
		return fmt.Errorf("%w: request %s: prompt tokens %d out of range 0..%d", ErrInvalidEntry, e.RequestID, e.PromptTokens, events.MaxTokenCount)
	case !validCount(e.CompletionTokens):
		return fmt.Errorf("%w: request %s: completion tokens %d out of range 0..%d", ErrInvalidEntry, e.RequestID, e.CompletionTokens, events.MaxTokenCount)
	case !validCount(e.Reserved):
		return fmt.Errorf("%w: request %s: reserved tokens %d out of range 0..%d", ErrInvalidEntry, e.RequestID, e.Reserved, events.MaxTokenCount)
	}
	return nil
}

// validCount reports whether n is a token count an entry may carry. The
// bound keeps both stores exact and in agreement: the Redis store's scripts
// add counts in Lua numbers (doubles, exact to 2^53) and its HINCRBY fails
// beyond 2^63, where the local store would count on.
func validCount(n int64) bool { return n >= 0 && n <= events.MaxTokenCount }

// DefaultDedupeRetention is how long both stores remember an applied request
// id by default. It must exceed the longest time an event can be redelivered
// (the event stream's retention), or a late redelivery is counted again.
const DefaultDedupeRetention = 30 * 24 * time.Hour

// Totals is the usage of one key in one period.
type Totals struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
	Requests         int64 `json:"requests"`
}

// Add adds e's counts to t.
func (t *Totals) Add(e Entry) {
	t.PromptTokens += e.PromptTokens
	t.CompletionTokens += e.CompletionTokens
	t.TotalTokens += e.PromptTokens + e.CompletionTokens
	t.Requests++
}

// Store is a durable ledger. Implementations are safe for concurrent use.
type Store interface {
	// Apply records a batch of entries atomically per entry and returns how
	// many were new. An entry whose RequestID was applied before changes
	// nothing (idempotence by request id), so a redelivered event is never
	// counted twice. Apply returns only after the store has the batch.
	Apply(ctx context.Context, entries []Entry) (applied int, err error)
	// Usage returns key keyID's usage in the period of kind p containing at.
	Usage(ctx context.Context, keyID string, p Period, at time.Time) (Totals, error)
	// UsageAll returns every key's usage in the period of kind p containing
	// at, by key id. Keys without usage in that period are absent.
	UsageAll(ctx context.Context, p Period, at time.Time) (map[string]Totals, error)
	// Close releases the store's resources.
	Close() error
}
