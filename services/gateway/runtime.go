package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/balancer"
	"github.com/llmproxy/llmproxy/services/gateway/internal/clientip"
	"github.com/llmproxy/llmproxy/services/gateway/internal/hooks"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
	"github.com/llmproxy/llmproxy/services/gateway/internal/retry"
)

// runtime is everything a config reload replaces: keys, backends, routing
// and scripts. A request reads the current runtime once at its start and
// keeps it to its end, so a reload never changes a request midway. A
// runtime is immutable once built.
type runtime struct {
	cfg  *config.Config
	keys auth.Store
	// clientKeys is keys when it budgets its look-ups per client (a Redis
	// key store), else nil: told once here, not per request.
	clientKeys auth.ClientStore
	authOn     bool
	ips        *clientip.Resolver
	pool       *balancer.Pool
	health     *balancer.HealthChecker
	retry      *retry.Policy
	lua        *hooks.Engine // nil without scripts
	// redact removes configured secrets from events; capture and
	// maxCapture say whether and how much response content they carry.
	redact     *redact.Redactor
	capture    bool
	maxCapture int
	// timeouts are the backends' total time limits per try (none: absent).
	timeouts map[*balancer.Upstream]time.Duration
	maxBody  int64
	// bodyTimeout bounds a pause in a request body (server.body_timeout).
	bodyTimeout time.Duration
	// sendTimeout bounds a pause in sending a reply (server.send_timeout).
	sendTimeout time.Duration
	// stop ends the runtime's background work (health checks).
	stop context.CancelFunc
}

// buildRuntime makes a runtime from cfg. keys, when non-nil, is kept
// instead of the config file's key list (a Redis key store).
func (g *Gateway) buildRuntime(cfg *config.Config, keys auth.Store) (*runtime, error) {
	rt := &runtime{cfg: cfg, authOn: cfg.AuthEnabled(), maxBody: cfg.Server.MaxBodyBytes,
		bodyTimeout: cfg.Server.BodyTimeout.D(), sendTimeout: cfg.Server.SendTimeout.D(), stop: func() {}}
	if rt.maxBody <= 0 {
		rt.maxBody = 10 << 20
	}
	rt.keys = keys
	if rt.keys == nil && cfg.Auth.Storage == "redis" {
		if g.redis == nil {
			return nil, fmt.Errorf("auth.storage is redis but no Redis client was given")
		}
		rt.keys = auth.NewRedisStore(g.redis, g.redisPrefix, cfg, 0)
	}
	if rt.keys == nil {
		fs, err := auth.NewFileStore(cfg)
		if err != nil {
			return nil, err
		}
		rt.keys = fs
	}
	rt.clientKeys, _ = rt.keys.(auth.ClientStore)
	var trusted []netip.Prefix
	for _, s := range cfg.TrustedProxies {
		p, err := auth.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("trusted_proxies: %w", err)
		}
		trusted = append(trusted, p)
	}
	rt.ips = clientip.New(trusted)
	red, err := redact.Compile(cfg.Logging.Redact)
	if err != nil {
		return nil, fmt.Errorf("logging.redact: %w", err)
	}
	rt.redact, rt.capture, rt.maxCapture = red, cfg.Logging.CaptureResponse, cfg.Logging.MaxCaptureBytes
	if rt.maxCapture <= 0 {
		rt.maxCapture = 64 << 10
	}
	var prev *balancer.Pool
	if old := g.rt.Load(); old != nil {
		prev = old.pool // a reload: unchanged backends keep their state
	}
	pool, err := balancer.NewPool(balancer.PoolConfig{
		Backends:    cfg.Backends,
		Strategy:    cfg.Routing.LoadBalanceStrategy,
		Fallback:    cfg.Routing.Fallback,
		HealthCheck: cfg.HealthCheck,
		Previous:    prev,
	})
	if err != nil {
		return nil, err
	}
	rt.pool = pool
	for _, b := range cfg.Backends {
		if b.Timeout.D() <= 0 {
			continue
		}
		ref := b.Name
		if ref == "" {
			ref = b.URL
		}
		if u := pool.ByName(ref); u != nil {
			if rt.timeouts == nil {
				rt.timeouts = map[*balancer.Upstream]time.Duration{}
			}
			rt.timeouts[u] = b.Timeout.D()
		}
	}
	rt.retry = retry.NewPolicy(cfg.Routing.Retry)
	rt.health = balancer.NewHealthChecker(pool, cfg.HealthCheck, nil)
	rt.health.SetLogger(g.log)
	if len(cfg.Lua.Scripts) > 0 {
		eng, err := hooks.Load(cfg.Lua.Scripts, hooks.Options{
			Timeout: cfg.Lua.Timeout.D(), Logger: g.log,
		})
		if err != nil {
			return nil, fmt.Errorf("lua: %w", err)
		}
		rt.lua = eng
	}
	return rt, nil
}

// start runs the runtime's first health round and its background checks.
func (rt *runtime) start(ctx context.Context) {
	ctx, rt.stop = context.WithCancel(ctx)
	rt.health.Start(ctx)
}

// Reload replaces keys (from the file), backends, routing and Lua scripts
// with cfg's, without dropping a connection: requests in flight finish on
// the runtime they started with. On error the running runtime stays.
func (g *Gateway) Reload(ctx context.Context, cfg *config.Config) error {
	rt, err := g.buildRuntime(cfg, g.keysOverride)
	if err != nil {
		return err
	}
	rt.start(ctx)
	if err := g.collector.swap(rt.pool); err != nil {
		rt.stop()
		return err
	}
	old := g.rt.Swap(rt)
	if old != nil {
		old.stop()
		// A backend made again (its settings changed) has its health
		// found afresh: one that was down and is up now says so, as a
		// check that finds it back does.
		for _, u := range rt.pool.Upstreams() {
			if was := old.pool.ByName(u.Name); was != nil && was != u && !was.Healthy() && u.Healthy() {
				g.log.Info("backend health changed", "backend", u.Name, "healthy", true, "reason", "configuration reloaded")
			}
		}
		// Requests in flight keep their connections; idle ones of the
		// replaced backends are closed (a backend kept as it was keeps
		// them).
		for _, u := range old.pool.Upstreams() {
			if slices.Contains(rt.pool.Upstreams(), u) {
				continue
			}
			if c, ok := u.Transport.(interface{ CloseIdleConnections() }); ok {
				c.CloseIdleConnections()
			}
		}
		if old.lua != nil {
			old.lua.Close()
		}
	}
	g.log.Info("configuration reloaded", "backends", len(cfg.Backends), "keys", len(cfg.APIKeys), "lua_scripts", len(cfg.Lua.Scripts))
	return nil
}

// CheckScripts compiles Lua scripts the way the gateway will, so that
// `llmproxy config check` reports a syntax error as file:line.
func CheckScripts(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	eng, err := hooks.Load(paths, hooks.Options{})
	if err != nil {
		return err
	}
	eng.Close()
	return nil
}

// backendLabel names up in what a client is told of its failures: "backend
// NAME", or "the backend" when server.public_status is false, as /readyz
// and /metrics keep the backends' names from clients then.
func (rt *runtime) backendLabel(up *balancer.Upstream) string {
	if rt.cfg.Server.PublicStatusOn() {
		return "backend " + up.Name
	}
	return "the backend"
}
