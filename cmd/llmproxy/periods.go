package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// periodLookupTimeout bounds the Redis look-up of one key's period.
const periodLookupTimeout = 5 * time.Second

// periodOf returns the quota period of a key id, the period `llmproxy
// usage` and GET /admin/usage report the key over: a file key's own
// quota_reset_period; with auth.storage: redis, the one in the key's
// record (read from rdb at each call, so that keys created after the
// server started are right); else, and for a key that is gone,
// auth.defaults.quota_reset_period. rdb may be nil.
func periodOf(cfg *config.Config, rdb redis.UniversalClient) func(string) ledger.Period {
	def, err := ledger.ParsePeriod(cfg.Auth.Defaults.QuotaResetPeriod)
	if err != nil {
		def = ledger.Monthly
	}
	file := map[string]ledger.Period{}
	for _, k := range cfg.APIKeys {
		if p, err := ledger.ParsePeriod(k.QuotaResetPeriod); err == nil && k.QuotaResetPeriod != "" {
			file[k.PublicID()] = p
		}
	}
	inRedis := rdb != nil && cfg.Auth.Storage == "redis"
	prefix := redisPrefix(cfg)
	return func(id string) ledger.Period {
		if p, ok := file[id]; ok {
			return p
		}
		if inRedis {
			ctx, cancel := context.WithTimeout(context.Background(), periodLookupTimeout)
			defer cancel()
			if rec, err := keys.Get(ctx, rdb, prefix, id); err == nil && rec.QuotaResetPeriod != "" {
				if p, err := ledger.ParsePeriod(rec.QuotaResetPeriod); err == nil {
					return p
				}
			}
		}
		return def
	}
}

// livePeriods is periodOf of the config in force: serve sets it again
// after each reload, so that GET /admin/usage reports a key added or
// given another quota_reset_period by SIGHUP over its new period. It is
// safe for concurrent use.
type livePeriods struct {
	rdb redis.UniversalClient
	f   atomic.Pointer[func(string) ledger.Period]
}

func newLivePeriods(cfg *config.Config, rdb redis.UniversalClient) *livePeriods {
	l := &livePeriods{rdb: rdb}
	l.set(cfg)
	return l
}

// set makes cfg's periods the ones reported.
func (l *livePeriods) set(cfg *config.Config) {
	f := periodOf(cfg, l.rdb)
	l.f.Store(&f)
}

// of returns keyID's quota period; see periodOf.
func (l *livePeriods) of(keyID string) ledger.Period { return (*l.f.Load())(keyID) }
