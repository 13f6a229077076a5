package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// redisAt names the Redis rdb connects to, for an error: its addresses,
// which hold no credentials.
func redisAt(rdb redis.UniversalClient) string {
	switch c := rdb.(type) {
	case *redis.Client:
		if a := c.Options().Addr; a != "FailoverClient" {
			return a
		}
		return "the master of redis.sentinel"
	case *redis.ClusterClient:
		return strings.Join(c.Options().Addrs, ",")
	}
	return "redis.url"
}

// openRedis returns a client for cfg's Redis (a single node from redis.url,
// a cluster from redis.addrs, or the master redis.sentinel names).
func openRedis(cfg *config.Config) (redis.UniversalClient, error) {
	r := cfg.Redis
	var tlsConfig *tls.Config
	if r.TLS.IsSet() {
		c, err := r.TLS.Load()
		if err != nil {
			return nil, fmt.Errorf("redis.tls: %w", err)
		}
		tlsConfig = c
	}
	if r.URL != "" {
		opt, err := redis.ParseURL(r.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		if r.Username != "" {
			opt.Username = r.Username
		}
		if r.Password != "" {
			opt.Password = r.Password
		}
		if tlsConfig != nil {
			if opt.TLSConfig != nil {
				// rediss://: its server name, with the files' trust.
				tlsConfig.ServerName = opt.TLSConfig.ServerName
			} else if host, _, err := net.SplitHostPort(opt.Addr); err == nil {
				tlsConfig.ServerName = host
			}
			opt.TLSConfig = tlsConfig
		}
		return redis.NewClient(opt), nil
	}
	if s := r.Sentinel; s.MasterName != "" {
		// The sentinels say where the master is, and where it is after
		// they fail it over; the client connects to it anew then.
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: s.MasterName, SentinelAddrs: s.Addrs,
			SentinelUsername: s.Username, SentinelPassword: s.Password,
			Username: r.Username, Password: r.Password, DB: s.DB, TLSConfig: tlsConfig,
		}), nil
	}
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: r.Addrs, Username: r.Username, Password: r.Password, TLSConfig: tlsConfig}), nil
}

// quietRedis silences go-redis's own log lines for a command: it writes
// one to stderr per failed dial ("connection pool: failed to dial after 5
// attempts …"), several before the command's own one-line error, which
// already says why Redis failed. serve routes them to its JSON log
// instead (redisLogger).
func quietRedis() { redis.SetLogger(discardRedisLog{}) }

// discardRedisLog implements go-redis's internal.Logging by writing
// nothing.
type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

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
	// fresh says the local store's file was missing or empty when it was
	// opened: a first start, or a ledger lost (see rebuildLostLedger).
	fresh bool
	rdb   redis.UniversalClient
	ready func(ctx context.Context) error
	close func() error
}

// writeReadyLua is what writeReady asks of Redis: a script that writes a
// key that expires at once, as the admission and the meter's writes do.
var writeReadyLua = redis.NewScript(`redis.call('SET', KEYS[1], '1', 'PX', 1000) return 1`)

// writeReady is the readiness of a process that writes to Redis (a meter,
// a gateway admitting there): that Redis runs its scripts and takes its
// writes, which a PING does not tell. An ACL user without EVALSHA or
// writes, a read-only replica and a Redis at maxmemory with noeviction all
// answer a PING, then refuse every admission or event.
func writeReady(rdb redis.UniversalClient, prefix string) func(context.Context) error {
	key := prefix + ":ready"
	return func(ctx context.Context) error {
		err := writeReadyLua.Run(ctx, rdb, []string{key}).Err()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			var rerr redis.Error
			if errors.As(err, &rerr) {
				return fmt.Errorf("it refuses this process's scripts or writes: %w", err)
			}
		}
		return err
	}
}

// openLedger opens the ledger: Redis when configured, else the local store
// under data_dir (allowed only where the process owns data_dir). With
// ping, a Redis that does not answer is an error (a command); a server
// passes false and starts without it (see serve).
func openLedger(ctx context.Context, cfg *config.Config, allowLocal, ping bool) (*ledgerHandle, error) {
	if cfg.Redis.Enabled() {
		rdb, err := openRedis(cfg)
		if err != nil {
			return nil, err
		}
		if ping {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := rdb.Ping(pctx).Err(); err != nil {
				_ = rdb.Close()
				return nil, fmt.Errorf("redis: %w", err)
			}
		}
		return &ledgerHandle{
			store: ledger.NewRedis(rdb, redisPrefix(cfg), ledger.WithDedupeRetention(dedupeRetention(cfg)),
				ledger.WithWaitReplicas(cfg.Redis.WaitReplicas, time.Second)),
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
	path := cfg.DataPath("ledger.db")
	st, serr := os.Stat(path)
	fresh := errors.Is(serr, os.ErrNotExist) || serr == nil && st.Size() == 0
	s, err := ledger.OpenLocal(path, ledger.WithDedupeRetention(dedupeRetention(cfg)))
	if err != nil {
		return nil, err
	}
	return &ledgerHandle{store: s, local: s, fresh: fresh, ready: func(context.Context) error { return nil }, close: s.Close}, nil
}

// dedupeRetention is how long the ledger remembers an applied request id:
// longer than the event stream keeps an event (nats.stream.max_age), with a
// day to spare, so that a consumer replaying the whole stream (a meter's
// durable consumer recreated) counts no event twice.
func dedupeRetention(cfg *config.Config) time.Duration {
	return max(ledger.DefaultDedupeRetention, cfg.NATS.Stream.MaxAge.D()+24*time.Hour)
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
		return ledger.NewRedisAdmitter(lh.rdb, redisPrefix(cfg), ledger.WithWaitReplicas(cfg.Redis.WaitReplicas, time.Second)), false
	}
	return ledger.NewMemoryAdmitter(lh.store, nil), true
}

// redisLogger routes go-redis's own messages (a dial that failed, a pool
// that gave up) into the process's JSON log as warnings, so that log
// shippers see one format; during an outage it writes at most one line per
// interval and counts the ones it left out.
type redisLogger struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newRedisLogger(log *slog.Logger) *redisLogger {
	return &redisLogger{log: log.With("component", "redis"), interval: time.Second, now: time.Now}
}

// routineRedisLog are the starts of go-redis's messages about what it
// handles itself: a pooled connection the server had closed (its idle
// timeout, over TLS, where the pool cannot check one before using it) is
// retired and the command sent on another. They go to DEBUG.
var routineRedisLog = []string{"push: pre-command drain failed, retiring conn"}

// noticeRedisLog are the starts of go-redis's messages about a Sentinel
// setup working as it should: the master the sentinels named, a failover
// followed, a sentinel found. They go to INFO; a sentinel that fails to
// answer stays a WARN.
var noticeRedisLog = []string{"sentinel: selected addr=", "sentinel: new master=", "sentinel: discovered new sentinel="}

// Printf implements go-redis's internal.Logging.
func (l *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	for _, r := range routineRedisLog {
		if strings.HasPrefix(format, r) {
			l.log.DebugContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
			return
		}
	}
	for _, r := range noticeRedisLog {
		if strings.HasPrefix(format, r) {
			l.log.InfoContext(ctx, fmt.Sprintf(format, v...))
			return
		}
	}
	l.mu.Lock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.interval {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	if n > 0 {
		l.log.WarnContext(ctx, msg, "suppressed", n)
		return
	}
	l.log.WarnContext(ctx, msg)
}

// rebuildLostLedger starts the local ledger over from the event stream when
// its file was missing or empty (fresh) although the meter's consumer had
// already applied events: the file was deleted or lost with its usage. The
// consumer is deleted, so that the meter, making it again, applies every
// event the stream still holds (nats.stream.max_age) into the new file;
// usage older than that is not recovered, and the WARN line says so.
func rebuildLostLedger(ctx context.Context, js jetstream.JetStream, durable, path string, log *slog.Logger) {
	c, err := js.Consumer(ctx, events.StreamName, durable)
	if err != nil {
		return // none yet: a first start
	}
	info := c.CachedInfo()
	if info == nil || info.AckFloor.Stream == 0 && info.Delivered.Stream == 0 {
		return
	}
	log.Warn("the local ledger was missing or empty although the meter had applied events to it; rebuilding it from the event stream (usage older than the stream keeps is not recovered)",
		"ledger", path, "applied_up_to_seq", info.AckFloor.Stream)
	if err := js.DeleteConsumer(ctx, events.StreamName, durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		log.Error("rebuild the local ledger: delete the meter's consumer", "consumer", durable, "err", err)
	}
}

// connectedReplicas returns how many replicas the Redis rdb writes to
// reports connected (INFO replication), asked within a second.
func connectedReplicas(ctx context.Context, rdb redis.UniversalClient) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := rdb.Info(ctx, "replication").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("no connected_slaves in INFO replication")
}
