// Command gatewaycore serves LLMProxy's real gateway (services/gateway) on
// its own, for the "passthrough core" row of make bench: the proxy path of
// issue 9's first target with nothing beside it. It builds gateway.New from
// a config loaded by pkg/config with Events nil and no JetStream, so the
// gateway publishes nothing, and no admitter, meter, NATS or outbox runs in
// the process. The config must have one backend, auth, rate limits and Lua
// off; anything else is refused so the row cannot measure more than the
// core by mistake. The http.Server has the timeouts `llmproxy serve` uses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway"
)

func main() {
	cfgPath := flag.String("config", "", "LLMProxy config file (one backend; auth, rate_limit and lua off)")
	flag.Parse()
	if err := run(*cfgPath); err != nil {
		fmt.Fprintln(os.Stderr, "gatewaycore:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	if path == "" {
		return errors.New("--config is required")
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	switch {
	case len(cfg.Backends) != 1:
		return fmt.Errorf("want exactly one backend, the config has %d", len(cfg.Backends))
	case cfg.AuthEnabled():
		return errors.New("auth must be off (auth.enabled: false)")
	case cfg.RateLimitEnabled():
		return errors.New("rate limits must be off (rate_limit.enabled: false)")
	case len(cfg.Lua.Scripts) > 0:
		return errors.New("lua.scripts must be empty")
	}

	level := slog.LevelInfo
	switch cfg.Logging.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// Events nil and JetStream nil: the gateway discards its events.
	g, err := gateway.New(gateway.Options{Config: cfg, Logger: log})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g.Start(ctx)

	srv := &http.Server{
		Handler:           g.Handler(),
		ConnContext:       g.ConnContext,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.Server.IdleTimeout.D(),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	log.Warn("gatewaycore listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	_ = srv.Shutdown(context.Background())
	return g.Close(context.Background())
}
