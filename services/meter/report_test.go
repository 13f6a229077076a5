package meter

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/ledger"
)

func TestReport(t *testing.T) {
	store := openStore(t)
	ctx := context.Background()
	entries := []ledger.Entry{
		{RequestID: "r1", KeyID: "kb", Time: testTime, PromptTokens: 10, CompletionTokens: 5},
		{RequestID: "r2", KeyID: "ka", Time: testTime, PromptTokens: 1, CompletionTokens: 2},
		{RequestID: "r3", KeyID: "kb", Time: testTime, PromptTokens: 3, CompletionTokens: 4},
		{RequestID: "r4", KeyID: "kc", Time: testTime.AddDate(0, -1, 0), PromptTokens: 100},
	}
	if _, err := store.Apply(ctx, entries); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		keys   []string
		period ledger.Period
		want   []KeyUsage
	}{
		{"all keys this month, sorted", nil, ledger.Monthly, []KeyUsage{
			{KeyID: "ka", Period: ledger.Monthly, PeriodID: "m2026-11", PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3, Requests: 1},
			{KeyID: "kb", Period: ledger.Monthly, PeriodID: "m2026-11", PromptTokens: 13, CompletionTokens: 9, TotalTokens: 22, Requests: 2},
		}},
		{"empty period means monthly", nil, "", []KeyUsage{
			{KeyID: "ka", Period: ledger.Monthly, PeriodID: "m2026-11", PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3, Requests: 1},
			{KeyID: "kb", Period: ledger.Monthly, PeriodID: "m2026-11", PromptTokens: 13, CompletionTokens: 9, TotalTokens: 22, Requests: 2},
		}},
		{"given keys in given order, zeros for no usage", []string{"kc", "kb"}, ledger.Daily, []KeyUsage{
			{KeyID: "kc", Period: ledger.Daily, PeriodID: "d2026-11-25"},
			{KeyID: "kb", Period: ledger.Daily, PeriodID: "d2026-11-25", PromptTokens: 13, CompletionTokens: 9, TotalTokens: 22, Requests: 2},
		}},
		{"never-reset totals", []string{"kc"}, ledger.Never, []KeyUsage{
			{KeyID: "kc", Period: ledger.Never, PeriodID: "all", PromptTokens: 100, TotalTokens: 100, Requests: 1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Report(ctx, store, tc.keys, tc.period, testTime)
			if err != nil {
				t.Fatal(err)
			}
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(tc.want)
			if string(g) != string(w) {
				t.Fatalf("got  %s\nwant %s", g, w)
			}
		})
	}
	if _, err := Report(ctx, store, nil, "hourly", testTime); err == nil {
		t.Fatal("unknown period accepted")
	}
	b, _ := json.Marshal(KeyUsage{KeyID: "k", Period: ledger.Daily, PeriodID: "d2026-11-25", PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3, Requests: 1})
	const wantJSON = `{"key_id":"k","period":"daily","period_id":"d2026-11-25","prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"requests":1}`
	if string(b) != wantJSON {
		t.Fatalf("JSON row %s", b)
	}
}
