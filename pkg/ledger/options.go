package ledger

import (
	"cmp"
	"time"

	"github.com/redis/go-redis/v9"
)

// Option configures a store. Each option says which stores read it; the
// others ignore it.
type Option func(*options)

type options struct {
	lockTimeout     time.Duration
	dedupeRetention time.Duration
	now             func() time.Time
	waitReplicas    int
	waitTimeout     time.Duration
}

func newOptions(opts []Option) options {
	o := options{
		lockTimeout:     time.Second,
		dedupeRetention: DefaultDedupeRetention,
		now:             time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithLockTimeout sets how long OpenLocal waits for the file lock another
// process holds before it fails with ErrLocked (default 1s). LocalStore only.
func WithLockTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.lockTimeout = d
		}
	}
}

// WithDedupeRetention sets how long an applied request id is remembered
// (default DefaultDedupeRetention). Both stores.
func WithDedupeRetention(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.dedupeRetention = d
		}
	}
}

// WithClock sets the clock that stamps applied request ids and decides when
// they expire (default time.Now). Periods never come from it: they come from
// Entry.Time. LocalStore only; Redis expires ids on its own clock.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// WithWaitReplicas has each Apply wait until n replicas of the Redis it
// writes to have its writes, at most timeout (default 1s), and fail with
// ErrNotReplicated when fewer have: Redis replicates after it answers, so
// a failover to a replica that had not yet received writes loses them, and
// a meter that acknowledged their events would never apply them again.
// RedisStore, and RedisAdmitter for its lease releases and cancellations,
// which it sends again in the background until enough replicas have them
// (without holding the release); on a single node or a Sentinel's master,
// not a Redis Cluster, whose pipelines span nodes.
func WithWaitReplicas(n int, timeout time.Duration) Option {
	return func(o *options) {
		o.waitReplicas = max(n, 0)
		o.waitTimeout = timeout
	}
}

// replicaWait is the wait WithWaitReplicas asks for, on rdb with the keys
// under prefix: none on a Redis Cluster, whose pipelines span nodes.
func (o options) replicaWait(rdb redis.UniversalClient, prefix string) replicaWait {
	if _, ok := rdb.(*redis.Client); !ok || o.waitReplicas <= 0 {
		return replicaWait{}
	}
	return replicaWait{n: o.waitReplicas, timeout: cmp.Or(o.waitTimeout, time.Second), mark: prefix + ":replicated"}
}
