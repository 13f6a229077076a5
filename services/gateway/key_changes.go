package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
)

// keyChangesPing is how long the subscription may stay silent before it is
// pinged; a connection that died without a word (a Redis restarted behind a
// proxy, a dropped route) is found and made again within twice that.
const keyChangesPing = 15 * time.Second

// watchKeyChanges makes a change of a key in the Redis key store (`llmproxy
// keys`, the admin API: changed, disabled, deleted) take effect at
// once: it listens on keys.ChangedChannel and has the key store forget the
// key each message names. Whenever it (re)subscribes, announcements may have
// been missed meanwhile, and the store forgets every key. Without the
// subscription (Redis down, an ACL user refused Pub/Sub) a change takes
// effect when the cached entry expires (auth.DefaultCacheTTL), as it did
// before. Keys from the config file (auth.storage: file) are not cached
// this way: while they are the store, nothing is subscribed or warned of,
// and a reload that makes Redis the store is met within keyStorePoll (its
// new store has nothing cached yet). It returns when ctx is done.
func (g *Gateway) watchKeyChanges(ctx context.Context) {
	const firstWait = 100 * time.Millisecond
	wait := firstWait
	for ctx.Err() == nil {
		if g.redisKeyStore() == nil {
			select {
			case <-time.After(keyStorePoll):
			case <-ctx.Done():
				return
			}
			continue
		}
		subscribed, err := g.listenKeyChanges(ctx)
		if ctx.Err() != nil || errors.Is(err, redis.ErrClosed) {
			return
		}
		if subscribed {
			wait = firstWait // a new failure, not the last one's
		}
		if g.redisKeyStore() != nil {
			g.logFailure(slog.LevelWarn, "key changes: not subscribed; a key's change takes effect when its cached entry expires",
				"err", err, "within", auth.DefaultCacheTTL)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// listenKeyChanges subscribes and has the key store forget the keys the
// messages name, until the subscription fails (a refusal, such as an ACL
// user without the channel, or a connection lost) or ctx is done. A
// subscription made again (go-redis reconnects on its own) makes the store
// forget every key. subscribed reports that a subscription was made.
func (g *Gateway) listenKeyChanges(ctx context.Context) (subscribed bool, err error) {
	ps := g.redis.Subscribe(ctx, keys.ChangedChannel(g.redisPrefix))
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	every := g.keyPing
	if every <= 0 {
		every = keyChangesPing
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, every)
		if ctx.Err() != nil {
			return subscribed, ctx.Err()
		}
		if err != nil && isTimeout(err) {
			// Silence: a Ping finds out whether the connection is still
			// there. A connection whose Redis went away without a word
			// (a dropped route, a frozen proxy) takes the Ping and
			// answers nothing: after another silence it is given up,
			// and the subscription made on a new one.
			if pinged {
				return subscribed, fmt.Errorf("no answer to a PING within %v", every)
			}
			if err := ps.Ping(ctx); err != nil {
				return subscribed, err
			}
			pinged = true
			continue
		}
		if err != nil {
			return subscribed, err
		}
		pinged = false
		store := g.redisKeyStore()
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				subscribed = true
				if store != nil {
					store.ForgetAll()
				}
			}
		case *redis.Message:
			if store != nil {
				store.Forget(m.Payload)
			}
		}
	}
}

// keyStorePoll is how often watchKeyChanges looks whether the key store,
// which a reload may change, is in Redis.
const keyStorePoll = time.Second

// redisKeyStore returns the key store when it is Redis's, else nil.
func (g *Gateway) redisKeyStore() *auth.RedisStore {
	rt := g.rt.Load()
	if rt == nil {
		return nil
	}
	store, _ := rt.keys.(*auth.RedisStore)
	return store
}

// isTimeout reports a read that timed out.
func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
