package main

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// periodOf returns the key periods `llmproxy usage` and GET /admin/usage
// report keys over: a file key's own quota_reset_period; with
// auth.storage: redis, the one in the key's record (read from rdb at each
// report, so that keys created after the server started are right); else,
// and for a key that is gone, auth.defaults.quota_reset_period. rdb may be
// nil.
func periodOf(cfg *config.Config, rdb redis.UniversalClient) *ledger.KeyPeriods {
	def, err := ledger.ParsePeriod(cfg.Auth.Defaults.QuotaResetPeriod)
	if err != nil {
		def = ledger.Monthly
	}
	file := map[string]ledger.Period{}
	for _, k := range cfg.APIKeys {
		p, err := ledger.ParsePeriod(k.QuotaResetPeriod)
		if err != nil || k.QuotaResetPeriod == "" {
			p = def
		}
		file[k.PublicID()] = p
	}
	inRedis := rdb != nil && cfg.Auth.Storage == "redis"
	prefix := redisPrefix(cfg)
	return &ledger.KeyPeriods{Default: def, Of: func(ctx context.Context, ids []string) (map[string]ledger.Period, error) {
		out := make(map[string]ledger.Period, len(ids))
		var rest []string
		for _, id := range ids {
			if p, ok := file[id]; ok {
				out[id] = p
			} else {
				rest = append(rest, id)
			}
		}
		if !inRedis || len(rest) == 0 {
			return out, nil
		}
		recs, err := keys.GetMany(ctx, rdb, prefix, rest)
		if err != nil {
			return nil, err
		}
		for id, rec := range recs {
			p, err := ledger.ParsePeriod(rec.QuotaResetPeriod)
			if err != nil || rec.QuotaResetPeriod == "" {
				p = def
			}
			out[id] = p
		}
		return out, nil
	}}
}

// livePeriods is periodOf of the config in force: serve sets it again
// after each reload, so that GET /admin/usage reports a key added or
// given another quota_reset_period by SIGHUP over its new period. It is
// safe for concurrent use.
type livePeriods struct {
	rdb redis.UniversalClient
	kp  atomic.Pointer[ledger.KeyPeriods]
}

func newLivePeriods(cfg *config.Config, rdb redis.UniversalClient) *livePeriods {
	l := &livePeriods{rdb: rdb}
	l.set(cfg)
	return l
}

// set makes cfg's periods the ones reported.
func (l *livePeriods) set(cfg *config.Config) {
	l.kp.Store(periodOf(cfg, l.rdb))
}

// current returns the key periods of the config in force; see periodOf.
func (l *livePeriods) current() *ledger.KeyPeriods { return l.kp.Load() }
