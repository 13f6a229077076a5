package ledger

import (
	"context"
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
	rows, err := Report(ctx, s, "", "", func(k string) Period { return periods[k] }, now)
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
	// An explicit period wins; an unknown key reads as zeros.
	rows, err = Report(ctx, s, "daily", Never, nil, now)
	if err != nil || len(rows) != 1 || rows[0].TotalTokens != 33 || rows[0].PeriodID != "all" {
		t.Fatalf("never: %+v %v", rows, err)
	}
	rows, err = Report(ctx, s, "nobody", "", nil, now)
	if err != nil || len(rows) != 1 || rows[0].TotalTokens != 0 {
		t.Fatalf("unknown key: %+v %v", rows, err)
	}
}
