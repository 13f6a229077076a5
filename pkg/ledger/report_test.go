package ledger

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestReportUsesEachKeysPeriod(t *testing.T) {
	s, err := OpenLocal(filepath.Join(t.TempDir(), "l.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	yesterday := now.AddDate(0, 0, -1)
	_, err = s.Apply(ctx, []Entry{
		{RequestID: "1", KeyID: "daily", Time: now, PromptTokens: 1, CompletionTokens: 2},
		{RequestID: "2", KeyID: "daily", Time: yesterday, PromptTokens: 10, CompletionTokens: 20},
		{RequestID: "3", KeyID: "monthly", Time: yesterday, PromptTokens: 5, CompletionTokens: 5},
	})
	if err != nil {
		t.Fatal(err)
	}
	periods := map[string]Period{"daily": Daily}
	kp := &KeyPeriods{Of: func(_ context.Context, ids []string) (map[string]Period, error) {
		out := map[string]Period{}
		for _, id := range ids {
			if p, ok := periods[id]; ok {
				out[id] = p
			}
		}
		return out, nil
	}}
	rows, err := Report(ctx, s, "", "", kp, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("rows %+v", rows)
	}
	if r := rows[0]; r.KeyID != "daily" || r.Period != Daily || r.PeriodID != "d2026-11-25" || r.TotalTokens != 3 || r.Requests != 1 {
		t.Fatalf("daily row %+v", r)
	}
	if r := rows[1]; r.KeyID != "monthly" || r.Period != Monthly || r.TotalTokens != 10 {
		t.Fatalf("monthly row %+v", r)
	}
	// An explicit period wins.
	rows, err = Report(ctx, s, "daily", Never, kp, now)
	if err != nil || len(rows) != 1 || rows[0].TotalTokens != 33 || rows[0].PeriodID != "all" {
		t.Fatalf("never: %+v %v", rows, err)
	}
	// A key the source knows without usage in the period reads as zeros;
	// one it does not know is an error, unless usage was recorded under it
	// (a deleted key's), which is reported over the default period.
	periods["idle"] = Weekly
	rows, err = Report(ctx, s, "idle", "", kp, now)
	if err != nil || len(rows) != 1 || rows[0].TotalTokens != 0 || rows[0].Period != Weekly {
		t.Fatalf("known key without usage: %+v %v", rows, err)
	}
	if rows, err = Report(ctx, s, "nobody", "", kp, now); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %+v %v, want ErrUnknownKey", rows, err)
	}
	kp.Default = Never
	rows, err = Report(ctx, s, "monthly", "", kp, now)
	if err != nil || len(rows) != 1 || rows[0].TotalTokens != 10 || rows[0].Period != Never {
		t.Fatalf("deleted key with usage: %+v %v", rows, err)
	}
	// Without a source of periods, every key is monthly and none unknown.
	rows, err = Report(ctx, s, "nobody", "", nil, now)
	if err != nil || len(rows) != 1 || rows[0].TotalTokens != 0 || rows[0].Period != Monthly {
		t.Fatalf("no period source: %+v %v", rows, err)
	}
}

// countingStore counts the store's reads.
type countingStore struct {
	Store
	usage, usageAll int
}

func (c *countingStore) Usage(ctx context.Context, k string, p Period, at time.Time) (Totals, error) {
	c.usage++
	return c.Store.Usage(ctx, k, p, at)
}

func (c *countingStore) UsageAll(ctx context.Context, p Period, at time.Time) (map[string]Totals, error) {
	c.usageAll++
	return c.Store.UsageAll(ctx, p, at)
}

// TestReportReadsOncePerPeriod: a report of every key reads the store once
// per period kind and asks for the keys' periods once, however many keys
// (a read per key took 9 s for 50,000 keys in Redis).
func TestReportReadsOncePerPeriod(t *testing.T) {
	local, err := OpenLocal(filepath.Join(t.TempDir(), "l.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	ctx := context.Background()
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var entries []Entry
	for i := range 300 {
		entries = append(entries, Entry{RequestID: fmt.Sprint(i), KeyID: fmt.Sprintf("k%03d", i), Time: now, PromptTokens: int64(i), CompletionTokens: 1})
	}
	if _, err := local.Apply(ctx, entries); err != nil {
		t.Fatal(err)
	}
	calls := 0
	kp := &KeyPeriods{Default: Weekly, Of: func(_ context.Context, ids []string) (map[string]Period, error) {
		calls++
		out := map[string]Period{}
		for i, id := range ids {
			out[id] = []Period{Daily, Monthly, Never}[i%3]
		}
		return out, nil
	}}
	s := &countingStore{Store: local}
	rows, err := Report(ctx, s, "", "", kp, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 300 || calls != 1 || s.usage != 0 || s.usageAll != 3 {
		t.Fatalf("%d rows, %d period look-ups, %d Usage and %d UsageAll reads; want 300 rows, 1, 0 and 3 (never, daily, monthly)", len(rows), calls, s.usage, s.usageAll)
	}
	for i, r := range rows {
		if r.KeyID != fmt.Sprintf("k%03d", i) || r.PromptTokens != int64(i) || r.Requests != 1 || r.Period != []Period{Daily, Monthly, Never}[i%3] {
			t.Fatalf("row %d: %+v", i, r)
		}
	}
}
