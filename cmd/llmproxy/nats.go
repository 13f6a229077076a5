package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
)

// bus is the process's connection to NATS JetStream, and the embedded
// server when the process runs one.
type bus struct {
	embedded *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	// streams is closed once the LLMPROXY and LLMPROXY_DLQ streams exist.
	streams chan struct{}
}

// openBus connects to cfg's NATS, or starts the embedded server under
// data_dir when nats.url is empty and embedded is allowed.
func openBus(ctx context.Context, cfg *config.Config, allowEmbedded bool, log *slog.Logger) (*bus, error) {
	b := &bus{streams: make(chan struct{})}
	opts := []nats.Option{
		nats.Name("llmproxy"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		// Asynchronous errors, such as messages a subscription dropped
		// because it fell behind (slow consumer), would otherwise go
		// unseen.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			log.Warn("nats async error", "err", err)
		}),
	}
	url := cfg.NATS.URL
	if url == "" {
		if !allowEmbedded {
			return nil, fmt.Errorf("nats.url is required for this target (the embedded server runs only with --target all)")
		}
		ns, err := startEmbedded(cfg)
		if err != nil {
			return nil, err
		}
		b.embedded = ns
		url = ns.ClientURL()
		opts = append(opts, nats.InProcessServer(ns))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.close()
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	b.nc = nc
	// A publish ack the server never sends must not stay pending forever:
	// the gateway's outbox retries it.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		b.close()
		return nil, err
	}
	b.js = js
	so := events.StreamOptions{MaxAge: cfg.NATS.Stream.MaxAge.D(), Replicas: cfg.NATS.Stream.Replicas}
	// The stream may not be reachable yet (NATS starting, or down): keep
	// trying in the background rather than refuse to start, so a gateway
	// can serve and keep its events in the outbox meanwhile.
	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = events.EnsureStreams(ectx, js, so)
	cancel()
	if err == nil {
		close(b.streams)
	} else {
		// A JetStream cluster that has just started needs some seconds to
		// elect its meta leader before it can create a stream.
		log.Warn("event streams not ready yet; retrying in the background", "err", err)
		go func() {
			for ctx.Err() == nil {
				time.Sleep(time.Second)
				ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := events.EnsureStreams(ectx, js, so)
				cancel()
				if err == nil {
					log.Info("event streams ready")
					close(b.streams)
					return
				}
				log.Debug("event streams not ready yet", "err", err)
			}
		}()
	}
	return b, nil
}

func startEmbedded(cfg *config.Config) (*server.Server, error) {
	dir := cfg.DataPath("nats")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	opts := &server.Options{
		ServerName: "llmproxy-embedded",
		JetStream:  true,
		StoreDir:   filepath.Clean(dir),
		NoSigs:     true,
		NoLog:      true,
		DontListen: true,
		// An event carries a request body up to max_body_bytes and a captured response, JSON-escaped.
		MaxPayload: int32(min(cfg.Server.MaxBodyBytes+6*int64(cfg.Logging.MaxCaptureBytes)+1<<20, 64<<20)),
	}
	if l := cfg.NATS.EmbeddedListen; l != "" {
		host, port, err := net.SplitHostPort(l)
		if err != nil {
			return nil, fmt.Errorf("nats.embedded_listen: %w", err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats.embedded_listen: bad port %q", port)
		}
		opts.DontListen, opts.Host, opts.Port = false, host, p
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats did not start within 15s")
	}
	return ns, nil
}

// waitStreams blocks until the event streams exist or ctx is done. Workers
// (meter, notifier, recorder) need them before they can create their
// consumers; a gateway does not wait (its outbox keeps the events).
func (b *bus) waitStreams(ctx context.Context) error {
	select {
	case <-b.streams:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("event streams not ready: %w", ctx.Err())
	}
}

// ready reports whether NATS is connected.
func (b *bus) ready() error {
	if b.nc == nil || !b.nc.IsConnected() {
		return fmt.Errorf("nats is not connected")
	}
	return nil
}

func (b *bus) close() {
	if b.nc != nil {
		_ = b.nc.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !b.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		b.nc.Close()
	}
	if b.embedded != nil {
		b.embedded.Shutdown()
		b.embedded.WaitForShutdown()
	}
}
