package main

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestEmbeddedMaxPayloadCoversBodies: the embedded server takes an event
// carrying a request body as large as server.max_body_bytes allows.
func TestEmbeddedMaxPayloadCoversBodies(t *testing.T) {
	for _, tc := range []struct {
		body int64
		want int64 // at least
	}{
		{config.DefaultMaxBodyBytes, config.DefaultMaxBodyBytes + 6*config.DefaultMaxCaptureBytes},
		{1 << 30, 64 << 20}, // the server's own bound
	} {
		cfg := &config.Config{DataDir: t.TempDir()}
		cfg.Server.MaxBodyBytes = tc.body
		cfg.Logging.MaxCaptureBytes = config.DefaultMaxCaptureBytes
		lock, err := lockStore(context.Background(), cfg, 0)
		if err != nil {
			t.Fatal(err)
		}
		e, err := startEmbedded(cfg, lock, false)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect("", nats.InProcessServer(e.ns))
		if err != nil {
			t.Fatal(err)
		}
		got := nc.MaxPayload()
		nc.Close()
		e.shutdown()
		if got < tc.want || got > 64<<20 {
			t.Errorf("max_body_bytes %d: max payload %d, want %d to %d", tc.body, got, tc.want, 64<<20)
		}
	}
}
