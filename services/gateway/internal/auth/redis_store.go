package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
)

// DefaultCacheTTL is how long a RedisStore trusts what it read: a disabled or
// deleted key keeps working (and a new one stays unknown) at most this long.
const DefaultCacheTTL = 5 * time.Second

// maxCached bounds a RedisStore's cache; when it is full, expired entries are
// dropped, and if none are, the whole cache.
const maxCached = 100_000

// RedisStore finds keys in the Redis key store (auth.storage: redis) that
// `llmproxy keys` and the admin API manage. It caches each answer, unknown
// keys included, for its TTL, so the hot path reads Redis at most once per key
// and TTL (and a flood of made-up keys at most once per key). Errors are not
// cached. It is safe for concurrent use.
type RedisStore struct {
	rdb    redis.UniversalClient
	prefix string
	cfg    *config.Config
	ttl    time.Duration
	now    func() time.Time

	mu    sync.Mutex
	cache map[string]cached // by hash
}

type cached struct {
	key     *Key // nil: unknown
	expires time.Time
}

// NewRedisStore returns a store reading keys under prefix from rdb, with
// cfg's auth.defaults and rate_limit.per_key filling what a key leaves unset.
// ttl <= 0 means DefaultCacheTTL. The caller owns rdb.
func NewRedisStore(rdb redis.UniversalClient, prefix string, cfg *config.Config, ttl time.Duration) *RedisStore {
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	return &RedisStore{rdb: rdb, prefix: prefix, cfg: cfg, ttl: ttl, now: time.Now, cache: map[string]cached{}}
}

// LookupHash returns the key whose secret hashes to hash, or ErrUnknownKey.
func (s *RedisStore) LookupHash(ctx context.Context, hash string) (*Key, error) {
	now := s.now()
	s.mu.Lock()
	c, ok := s.cache[hash]
	s.mu.Unlock()
	if ok && now.Before(c.expires) {
		if c.key == nil {
			return nil, ErrUnknownKey
		}
		return c.key, nil
	}
	rec, err := keys.LookupHash(ctx, s.rdb, s.prefix, hash)
	var key *Key
	switch {
	case errors.Is(err, keys.ErrNotFound):
	case err != nil:
		return nil, err
	default:
		if key, err = FromRecord(s.cfg, rec); err != nil {
			return nil, fmt.Errorf("key %s: %w", rec.ID, err)
		}
	}
	s.put(hash, cached{key: key, expires: now.Add(s.ttl)}, now)
	if key == nil {
		return nil, ErrUnknownKey
	}
	return key, nil
}

func (s *RedisStore) put(hash string, c cached, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.cache) >= maxCached {
		for h, e := range s.cache {
			if !now.Before(e.expires) {
				delete(s.cache, h)
			}
		}
		if len(s.cache) >= maxCached {
			clear(s.cache)
		}
	}
	s.cache[hash] = c
}

// FromRecord resolves a key of the Redis key store as FromConfig resolves a
// configured one.
func FromRecord(cfg *config.Config, rec keys.Record) (*Key, error) {
	return FromConfig(cfg, rec.APIKey(cfg.RateLimit.PerKey))
}
