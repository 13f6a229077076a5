// Package eventstest runs the LLMProxy streams (package events) on a real,
// embedded NATS JetStream server for the tests of the services that publish
// and consume them: an empty store in a temporary directory, the streams in
// place, everything stopped when the test ends.
package eventstest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server starts an embedded nats-server with JetStream and an empty store
// on 127.0.0.1:port (-1: any free port), shut down when the test ends.
func Server(t testing.TB, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Connect connects to s with opts and returns a JetStream client, the
// streams in place (EnsureStreams); the connection closes when the test
// ends.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	EnsureStreams(t, js)
	return js
}

// Start starts a Server on any free port and connects to it with a client
// that reconnects for ever, within 20ms, for tests that restart the server.
func Start(t testing.TB) (*server.Server, jetstream.JetStream) {
	t.Helper()
	s := Server(t, -1)
	return s, Connect(t, s, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
}

// JetStream is Start's client alone.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	_, js := Start(t)
	return js
}

// RestartEmpty shuts s down and starts a server on its port with an empty
// store, as a server without a volume comes back: no stream, no consumer.
func RestartEmpty(t testing.TB, s *server.Server) *server.Server {
	t.Helper()
	port := s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()
	return Server(t, port)
}

// EnsureStreams creates the LLMProxy streams that are missing, as every
// process does on connecting and reconnecting.
func EnsureStreams(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
}
