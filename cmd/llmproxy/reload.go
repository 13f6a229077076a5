package main

import (
	"context"
	"log/slog"
	"reflect"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// reload re-reads the config file on SIGHUP and swaps the gateway's keys,
// limits, backends, routing and Lua scripts; a bad file keeps the running
// config. running is the config the process started with: what SIGHUP
// cannot change (see restartOnly) stays as it says, and a file that
// changes it gets a warning naming the keys, instead of a "configuration
// reloaded" that an operator would take to cover them too. It returns
// the config now in force, or nil when nothing was reloaded.
func reload(ctx context.Context, path, adminListen string, running *config.Config, gw *gateway.Gateway, log *slog.Logger) *config.Config {
	if gw == nil {
		log.Info("SIGHUP ignored: this target has nothing to reload; restart it to apply a new config")
		return nil
	}
	cfg, err := loadConfig(path)
	if err != nil {
		log.Error("reload refused; the running configuration stays", "err", err)
		return nil
	}
	if adminListen != "" {
		cfg.Admin.Listen = adminListen
	}
	if err := gw.Reload(ctx, cfg); err != nil {
		attrs := []any{"err", err}
		if keys := restartOnly(running, cfg); len(keys) > 0 {
			// What the new config asks may rest on one of them (auth.storage
			// redis on a redis.url the process does not have yet).
			attrs = append(attrs, "restart_only", keys, "hint", "these keys changed too and take a restart")
		}
		log.Error("reload refused; the running configuration stays", attrs...)
		return nil
	}
	if keys := restartOnly(running, cfg); len(keys) > 0 {
		log.Warn("changed in the file but not reloaded: these keys take a restart; the running values stay", "keys", keys)
	}
	if running.NATS.URL == "" && embeddedMaxPayload(cfg) > embeddedMaxPayload(running) {
		// The embedded server's message size was set at start from
		// these: the new sizes apply, but an event larger than the
		// server takes is published cut until a restart.
		log.Warn("server.max_body_bytes or logging.max_capture_bytes grew: until a restart the embedded NATS server takes events "+
			"of the sizes the process started with, and a larger event is published with its request body or response cut (marked truncated)",
			"max_payload", embeddedMaxPayload(running), "after_restart", embeddedMaxPayload(cfg))
	}
	return cfg
}

// restartOnly lists the keys of next whose value differs from running's
// and that a reload does not apply: the listeners, the stores and the event
// bus, the webhooks (the notifier's), the HTTP server's timeouts, the log
// level, the recorder's database and where rate limits are kept.
func restartOnly(running, next *config.Config) []string {
	fields := []struct {
		key  string
		a, b any
	}{
		{"listen", running.Listen, next.Listen},
		{"data_dir", running.DataDir, next.DataDir},
		{"nats", running.NATS, next.NATS},
		{"redis", running.Redis, next.Redis},
		{"admin", running.Admin, next.Admin},
		{"server.read_header_timeout", running.Server.ReadHeaderTimeout, next.Server.ReadHeaderTimeout},
		{"server.idle_timeout", running.Server.IdleTimeout, next.Server.IdleTimeout},
		{"server.drain_timeout", running.Server.DrainTimeout, next.Server.DrainTimeout},
		{"usage_hook", running.UsageHook, next.UsageHook},
		{"webhooks", running.Webhooks, next.Webhooks},
		{"rate_limit.storage", running.RateLimit.Storage, next.RateLimit.Storage},
		{"logging.level", running.Logging.Level, next.Logging.Level},
		{"logging.postgres", running.Logging.Postgres, next.Logging.Postgres},
	}
	var out []string
	for _, f := range fields {
		if !reflect.DeepEqual(f.a, f.b) {
			out = append(out, f.key)
		}
	}
	return out
}
