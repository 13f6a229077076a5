package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// DefaultCacheTTL is how long a RedisStore trusts what it read: a disabled or
// deleted key keeps working (and a new one stays unknown) at most this long
// when the change's announcement (keys.ChangedChannel, see Forget) does not
// reach it.
const DefaultCacheTTL = 5 * time.Second

// maxKnown bounds the keys a RedisStore caches; when it is full, expired
// entries are dropped, and if none are, all of them. Only keys found in
// Redis count, so it fills only with that many keys in use.
const maxKnown = 100_000

// maxUnknown bounds the unknown keys a RedisStore caches, apart from the
// known ones: a flood of made-up keys fills only this part, and evicts
// the older half of it rather than a key in use.
const maxUnknown = 100_000

// LookupTimeout bounds one read of a key from Redis, as an admission is
// bounded (ledger's callTimeout): a Redis that does not answer, or whose
// address takes no connection, would otherwise hold the request through
// go-redis's retries of dials and reads, a minute and more. The deadline
// is checked between tries, so a read may last one dial or read timeout
// past it.
const LookupTimeout = 5 * time.Second

// RedisStore finds keys in the Redis key store (auth.storage: redis) that
// `llmproxy keys` and the admin API manage. It caches each answer, unknown
// keys included, for its TTL, so the hot path reads Redis at most once per key
// and TTL (and a flood of made-up keys at most once per key, and within the
// global rate limit: see LookupHash). Errors are not cached. It is safe for
// concurrent use.
type RedisStore struct {
	rdb    redis.UniversalClient
	prefix string
	cfg    *config.Config
	ttl    time.Duration
	now    func() time.Time

	// mu guards known; a hit only reads it.
	mu    sync.RWMutex
	known map[string]cached // by hash
	// forgets counts Forget and ForgetAll calls: a read from Redis that
	// one overlapped may hold what the change replaced, and is not
	// cached. It is added to and compared with mu held, so a Forget
	// either comes before a read's answer is cached (which is then
	// not kept) or after it (and expires it).
	forgets atomic.Uint64

	// unknownMu guards the unknown keys, kept in two generations: when
	// unknown holds half of maxUnknown it becomes unknownOld (the
	// previous one is dropped), so an eviction is cheap and keeps the
	// latest entries.
	unknownMu  sync.Mutex
	unknown    map[string]time.Time // by hash: when the entry expires
	unknownOld map[string]time.Time

	maxKnown, maxUnknown int
	// lookupTimeout bounds a read from Redis (LookupTimeout; tests
	// shorten it).
	lookupTimeout time.Duration

	// lookups bounds the Redis reads of secrets not in known, and
	// clients each client's share of them; nil without a global rate
	// limit.
	lookups *lookupBudget
	clients *clientBudgets
}

type cached struct {
	key     *Key
	expires time.Time
}

// NewRedisStore returns a store reading keys under prefix from rdb, with
// cfg's auth.defaults and rate_limit.per_key filling what a key leaves unset.
// ttl <= 0 means DefaultCacheTTL. The caller owns rdb.
func NewRedisStore(rdb redis.UniversalClient, prefix string, cfg *config.Config, ttl time.Duration) *RedisStore {
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	s := &RedisStore{
		rdb: rdb, prefix: prefix, cfg: cfg, ttl: ttl, now: time.Now,
		known: map[string]cached{}, unknown: map[string]time.Time{},
		maxKnown: maxKnown, maxUnknown: maxUnknown, lookupTimeout: LookupTimeout,
	}
	if g := cfg.RateLimit.Global; cfg.RateLimitEnabled() && g.IsEnabled() {
		s.lookups = newLookupBudget(ledger.GlobalLimit{RPS: g.RequestsPerSecond, Burst: g.BurstSize})
		s.clients = newClientBudgets(ledger.GlobalLimit{RPS: g.RequestsPerSecond, Burst: g.BurstSize})
	}
	return s
}

// LookupHash returns the key whose secret hashes to hash, or ErrUnknownKey,
// as LookupHashFrom does for a client it does not know.
func (s *RedisStore) LookupHash(ctx context.Context, hash string) (*Key, error) {
	return s.LookupHashFrom(ctx, hash, netip.Addr{})
}

// LookupHashFrom returns the key whose secret hashes to hash, or
// ErrUnknownKey, for a request from client. With a global rate limit, a
// secret that is not a key this store has read (a new key, or a made-up one
// once its cached answer has expired) is read from Redis only within that
// rate, with its burst, and within a quarter of them for one client (an
// IPv4 address, an IPv6 /64; a read that finds a key is given back to the
// client's share); beyond either it returns a *LookupsLimitedError. A key in use is re-read when its entry expires
// whatever the rate, so a flood of made-up keys does not lock out the keys
// in use, and one client's flood leaves most of the budget to the others'
// new keys.
func (s *RedisStore) LookupHashFrom(ctx context.Context, hash string, client netip.Addr) (*Key, error) {
	now := s.now()
	s.mu.RLock()
	c, known := s.known[hash]
	s.mu.RUnlock()
	if known && now.Before(c.expires) {
		return c.key, nil
	}
	if !known {
		if s.isUnknown(hash, now) {
			return nil, ErrUnknownKey
		}
		if s.lookups != nil {
			if wait, ok := s.clients.take(client, now); !ok {
				return nil, &LookupsLimitedError{RetryAfter: wait}
			}
			if wait, ok := s.lookups.take(now); !ok {
				s.clients.giveBack(client) // no read was made
				return nil, &LookupsLimitedError{RetryAfter: wait}
			}
		}
	}
	gen := s.forgets.Load()
	lctx, cancel := context.WithTimeout(ctx, s.lookupTimeout)
	rec, err := keys.LookupHash(lctx, s.rdb, s.prefix, hash)
	cancel()
	expires := now.Add(s.ttl)
	switch {
	case errors.Is(err, keys.ErrNotFound):
		s.putUnknown(hash, expires, known, gen, now)
		return nil, ErrUnknownKey
	case err != nil:
		return nil, err
	}
	key, err := FromRecord(s.cfg, rec)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", rec.ID, err)
	}
	if !known && s.clients != nil {
		// The client's share bounds its made-up keys, not its real ones.
		s.clients.giveBack(client)
	}
	s.putKnown(hash, cached{key: key, expires: expires}, now, gen)
	return key, nil
}

// Forget drops what the store knows of the key whose secret hashes to hash
// (a change of it was announced): its next use reads it from Redis again,
// as a key in use whose entry expired, outside the look-up budget.
func (s *RedisStore) Forget(hash string) {
	s.mu.Lock()
	s.forgets.Add(1)
	if c, ok := s.known[hash]; ok {
		c.expires = time.Time{}
		s.known[hash] = c
	}
	s.mu.Unlock()
	s.dropUnknown(hash)
}

// ForgetAll drops what the store knows of every key, as Forget does of
// one: for when announcements may have been missed.
func (s *RedisStore) ForgetAll() {
	s.mu.Lock()
	s.forgets.Add(1)
	for h, c := range s.known {
		c.expires = time.Time{}
		s.known[h] = c
	}
	s.mu.Unlock()
	s.unknownMu.Lock()
	clear(s.unknown)
	clear(s.unknownOld)
	s.unknownMu.Unlock()
}

// isUnknown reports whether hash is cached as unknown at now.
func (s *RedisStore) isUnknown(hash string, now time.Time) bool {
	s.unknownMu.Lock()
	exp, ok := s.unknown[hash]
	if !ok {
		exp, ok = s.unknownOld[hash]
	}
	s.unknownMu.Unlock()
	return ok && now.Before(exp)
}

// putUnknown caches hash as unknown until expires; wasKnown says it was a
// key (deleted since), whose entry goes.
func (s *RedisStore) putUnknown(hash string, expires time.Time, wasKnown bool, gen uint64, now time.Time) {
	s.mu.Lock()
	if wasKnown {
		delete(s.known, hash)
	}
	if s.forgets.Load() != gen {
		expires = now // a change overlapped the read: answered, not kept
	}
	s.unknownMu.Lock()
	s.mu.Unlock()
	defer s.unknownMu.Unlock()
	if _, ok := s.unknown[hash]; !ok && len(s.unknown) >= max(s.maxUnknown/2, 1) {
		s.unknownOld, s.unknown = s.unknown, make(map[string]time.Time, len(s.unknown))
	}
	s.unknown[hash] = expires
}

// putKnown caches the key c hashed to hash.
func (s *RedisStore) putKnown(hash string, c cached, now time.Time, gen uint64) {
	s.mu.Lock()
	if s.forgets.Load() != gen {
		c.expires = now // a change overlapped the read: answered, not kept
	}
	if _, ok := s.known[hash]; !ok && len(s.known) >= s.maxKnown {
		for h, e := range s.known {
			if !now.Before(e.expires) {
				delete(s.known, h)
			}
		}
		if len(s.known) >= s.maxKnown {
			clear(s.known)
		}
	}
	s.known[hash] = c
	s.mu.Unlock()
	// A key created after its hash was cached as unknown: the stale
	// entry would only take room.
	s.dropUnknown(hash)
}

// dropUnknown removes hash from the unknown keys.
func (s *RedisStore) dropUnknown(hash string) {
	s.unknownMu.Lock()
	delete(s.unknown, hash)
	delete(s.unknownOld, hash)
	s.unknownMu.Unlock()
}

// FromRecord resolves a key of the Redis key store as FromConfig resolves a
// configured one.
func FromRecord(cfg *config.Config, rec keys.Record) (*Key, error) {
	return FromConfig(cfg, rec.APIKey(cfg.RateLimit.PerKey))
}
