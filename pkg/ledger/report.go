package ledger

import (
	"context"
	"sort"
	"time"
)

// UsageRow is one key's usage in one period, as `llmproxy usage --json` and
// the admin API print it.
type UsageRow struct {
	KeyID    string `json:"key_id"`
	Period   Period `json:"period"`
	PeriodID string `json:"period_id"`
	Totals
}

// Report returns usage rows for the period containing at. periodOf gives
// each key's own quota period (nil, or "" for a key: p, else monthly when p
// is empty too). With keyID set, only that key is reported (a row of zeros
// when it has no usage); otherwise every key with usage in the period, sorted
// by key id.
func Report(ctx context.Context, s Store, keyID string, p Period, periodOf func(keyID string) Period, at time.Time) ([]UsageRow, error) {
	pick := func(k string) Period {
		if p != "" {
			return p
		}
		if periodOf != nil {
			if kp := periodOf(k); kp != "" {
				return kp
			}
		}
		return Monthly
	}
	if keyID != "" {
		kp := pick(keyID)
		t, err := s.Usage(ctx, keyID, kp, at)
		if err != nil {
			return nil, err
		}
		return []UsageRow{{KeyID: keyID, Period: kp, PeriodID: PeriodID(kp, at), Totals: t}}, nil
	}
	// Every key appears in the never-reset totals; read each key's own
	// period from there.
	all, err := s.UsageAll(ctx, Never, at)
	if err != nil {
		return nil, err
	}
	rows := make([]UsageRow, 0, len(all))
	for k, total := range all {
		kp := pick(k)
		t := total
		if kp != Never {
			if t, err = s.Usage(ctx, k, kp, at); err != nil {
				return nil, err
			}
		}
		rows = append(rows, UsageRow{KeyID: k, Period: kp, PeriodID: PeriodID(kp, at), Totals: t})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].KeyID < rows[j].KeyID })
	return rows, nil
}
