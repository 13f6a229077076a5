package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// openRedis returns a client for cfg's Redis (a single node from redis.url,
// or a cluster from redis.addrs).
func openRedis(cfg *config.Config) (redis.UniversalClient, error) {
	if cfg.Redis.URL != "" {
		opt, err := redis.ParseURL(cfg.Redis.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		if cfg.Redis.Password != "" {
			opt.Password = cfg.Redis.Password
		}
		return redis.NewClient(opt), nil
	}
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: cfg.Redis.Addrs, Password: cfg.Redis.Password}), nil
}

func redisPrefix(cfg *config.Config) string {
	if cfg.Redis.Prefix != "" {
		return cfg.Redis.Prefix
	}
	return "llmproxy"
}

// ledgerHandle is an open ledger and what it needs to report and close.
type ledgerHandle struct {
	store ledger.DetailedStore
	// local is the local store (target all without Redis); rdb the Redis
	// client otherwise.
	local *ledger.LocalStore
	rdb   redis.UniversalClient
	ready func(ctx context.Context) error
	close func() error
}

// openLedger opens the ledger: Redis when configured, else the local store
// under data_dir (allowed only where the process owns data_dir).
func openLedger(ctx context.Context, cfg *config.Config, allowLocal bool) (*ledgerHandle, error) {
	if cfg.Redis.Enabled() {
		rdb, err := openRedis(cfg)
		if err != nil {
			return nil, err
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := rdb.Ping(pctx).Err(); err != nil {
			_ = rdb.Close()
			return nil, fmt.Errorf("redis: %w", err)
		}
		return &ledgerHandle{
			store: ledger.NewRedis(rdb, redisPrefix(cfg)),
			rdb:   rdb,
			ready: func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
			close: rdb.Close,
		}, nil
	}
	if !allowLocal {
		return nil, fmt.Errorf("redis.url is required for this target (the local ledger is only for --target all)")
	}
	if err := os.MkdirAll(cfg.DataPath(), 0o750); err != nil {
		return nil, err
	}
	s, err := ledger.OpenLocal(cfg.DataPath("ledger.db"))
	if err != nil {
		return nil, err
	}
	return &ledgerHandle{store: s, local: s, ready: func(context.Context) error { return nil }, close: s.Close}, nil
}

// chooseAdmitter picks the admission store: the single binary's local
// ledger, Redis (rate_limit.storage: redis), or this process's memory
// (rate_limit.storage: memory), whose reservations the gateway settles
// itself.
func chooseAdmitter(cfg *config.Config, lh *ledgerHandle) (a ledger.Admitter, settleLocally bool) {
	switch {
	case lh == nil:
		return ledger.NewMemoryAdmitter(nil, nil), true
	case lh.local != nil:
		return ledger.NewLocalAdmitter(lh.local, nil), false
	case cfg.RateLimit.Storage == "redis":
		return ledger.NewRedisAdmitter(lh.rdb, redisPrefix(cfg)), false
	}
	return ledger.NewMemoryAdmitter(lh.store, nil), true
}
