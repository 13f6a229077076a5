package meter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// KeyUsage is one key's usage in one period, as `llmproxy usage --json` and
// GET /admin/usage print it.
type KeyUsage struct {
	KeyID            string        `json:"key_id"`
	Period           ledger.Period `json:"period"`
	PeriodID         string        `json:"period_id"`
	PromptTokens     int64         `json:"prompt_tokens"`
	CompletionTokens int64         `json:"completion_tokens"`
	TotalTokens      int64         `json:"total_tokens"`
	Requests         int64         `json:"requests"`
}

func keyUsage(keyID string, p ledger.Period, at time.Time, t ledger.Totals) KeyUsage {
	return KeyUsage{
		KeyID:            keyID,
		Period:           p,
		PeriodID:         ledger.PeriodID(p, at),
		PromptTokens:     t.PromptTokens,
		CompletionTokens: t.CompletionTokens,
		TotalTokens:      t.TotalTokens,
		Requests:         t.Requests,
	}
}

// Report returns the usage of keys in the period of kind p containing at.
// With keyIDs nil it reports every key with usage in that period, sorted by
// key id; otherwise one row per given key, in the given order, with zeros
// for a key without usage. An empty p means monthly.
func Report(ctx context.Context, store ledger.Store, keyIDs []string, p ledger.Period, at time.Time) ([]KeyUsage, error) {
	p, err := ledger.ParsePeriod(string(p))
	if err != nil {
		return nil, err
	}
	if keyIDs == nil {
		all, err := store.UsageAll(ctx, p, at)
		if err != nil {
			return nil, fmt.Errorf("usage of all keys: %w", err)
		}
		rows := make([]KeyUsage, 0, len(all))
		for k, t := range all {
			rows = append(rows, keyUsage(k, p, at, t))
		}
		slices.SortFunc(rows, func(a, b KeyUsage) int { return strings.Compare(a.KeyID, b.KeyID) })
		return rows, nil
	}
	rows := make([]KeyUsage, 0, len(keyIDs))
	for _, k := range keyIDs {
		t, err := store.Usage(ctx, k, p, at)
		if err != nil {
			return nil, fmt.Errorf("usage of key %s: %w", k, err)
		}
		rows = append(rows, keyUsage(k, p, at, t))
	}
	return rows, nil
}
