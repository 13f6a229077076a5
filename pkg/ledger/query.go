package ledger

import (
	"context"
	"time"
)

// DetailedStore is a Store that also answers finer questions: usage per key
// and model, usage per user, and the tokens reserved at admission but not yet
// settled. Both LocalStore and RedisStore implement it. Implementations are
// safe for concurrent use.
type DetailedStore interface {
	Store
	// UsageByModel returns key keyID's usage in the period of kind p
	// containing at, by model. Entries without a model are counted under "".
	UsageByModel(ctx context.Context, keyID string, p Period, at time.Time) (map[string]Totals, error)
	// UsageByUser returns the usage of every key with user id userID in the
	// period of kind p containing at. Entries without a user id are not
	// counted per user.
	UsageByUser(ctx context.Context, userID string, p Period, at time.Time) (Totals, error)
	// Reserved returns key keyID's outstanding reserved tokens.
	Reserved(ctx context.Context, keyID string) (int64, error)
	// AddReserved adds tokens (which may be negative) to key keyID's
	// reservation counter. The counter never goes below zero.
	AddReserved(ctx context.Context, keyID string, tokens int64) error
}

var (
	_ DetailedStore = (*LocalStore)(nil)
	_ DetailedStore = (*RedisStore)(nil)
)
