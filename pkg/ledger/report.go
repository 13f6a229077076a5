package ledger

import (
	"context"
	"errors"
	"fmt"
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

// ErrUnknownKey is Report's error for a key id that no key has and no usage
// was ever recorded under.
var ErrUnknownKey = errors.New("no such key")

// KeyPeriods says which keys exist and over which quota period each is
// reported.
type KeyPeriods struct {
	// Of returns the quota period of each of keyIDs that exists; a key that
	// is gone, or never was, is absent. It is called once per report, with
	// every key id at once, so that a source in Redis reads them in one
	// round trip.
	Of func(ctx context.Context, keyIDs []string) (map[string]Period, error)
	// Default is the period of a key Of does not know.
	Default Period
}

// Report returns usage rows for the period containing at: over p when it
// is set, else over each key's own quota period (kp, which may be nil:
// monthly for every key). With keyID set, only that key is reported (a row
// of zeros when it has no usage in the period; ErrUnknownKey when kp knows
// no such key and nothing was ever recorded under it); otherwise every key
// with usage ever recorded, sorted by key id, with zeros for one that has
// none in its period.
//
// The store is read once per period kind, not once per key.
func Report(ctx context.Context, s Store, keyID string, p Period, kp *KeyPeriods, at time.Time) ([]UsageRow, error) {
	if keyID != "" {
		periods, err := kp.of(ctx, []string{keyID})
		if err != nil {
			return nil, err
		}
		if _, known := periods[keyID]; !known && kp != nil && kp.Of != nil {
			ever, err := s.Usage(ctx, keyID, Never, at)
			if err != nil {
				return nil, err
			}
			if ever.Requests == 0 {
				return nil, fmt.Errorf("key %s: %w", keyID, ErrUnknownKey)
			}
		}
		per := kp.pick(p, periods, keyID)
		t, err := s.Usage(ctx, keyID, per, at)
		if err != nil {
			return nil, err
		}
		return []UsageRow{{KeyID: keyID, Period: per, PeriodID: PeriodID(per, at), Totals: t}}, nil
	}
	// Every key appears in the never-reset totals: the keys to report.
	all, err := s.UsageAll(ctx, Never, at)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(all))
	for k := range all {
		ids = append(ids, k)
	}
	sort.Strings(ids)
	periods, err := kp.of(ctx, ids)
	if err != nil {
		return nil, err
	}
	byPeriod := map[Period]map[string]Totals{Never: all}
	rows := make([]UsageRow, 0, len(ids))
	for _, k := range ids {
		per := kp.pick(p, periods, k)
		totals, ok := byPeriod[per]
		if !ok {
			if totals, err = s.UsageAll(ctx, per, at); err != nil {
				return nil, err
			}
			byPeriod[per] = totals
		}
		rows = append(rows, UsageRow{KeyID: k, Period: per, PeriodID: PeriodID(per, at), Totals: totals[k]})
	}
	return rows, nil
}

func (kp *KeyPeriods) of(ctx context.Context, ids []string) (map[string]Period, error) {
	if kp == nil || kp.Of == nil || len(ids) == 0 {
		return nil, nil
	}
	m, err := kp.Of(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("quota periods of the keys: %w", err)
	}
	return m, nil
}

// pick is key k's period: p when set, else k's own, else the default, else
// monthly.
func (kp *KeyPeriods) pick(p Period, periods map[string]Period, k string) Period {
	if p != "" {
		return p
	}
	if own, ok := periods[k]; ok && own != "" {
		return own
	}
	if kp != nil && kp.Default != "" {
		return kp.Default
	}
	return Monthly
}
