package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startNATS runs a JetStream server for the test on host:port (port -1:
// any free one), stopped at the test's end.
func startNATS(t *testing.T, host string, port int) *server.Server {
	t.Helper()
	return startNATSWithToken(t, host, port, "")
}

// startNATSWithToken is startNATS with a server that wants token (none
// when empty).
func startNATSWithToken(t *testing.T, host string, port int, token string) *server.Server {
	t.Helper()
	return runNATS(t, &server.Options{Host: host, Port: port, JetStream: true, StoreDir: t.TempDir(), Authorization: token})
}

// runNATS starts a nats-server of opts (without signals or logs), waits
// until it takes connections, and shuts it down when the test ends.
func runNATS(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// waitWhy waits up to 10 s for b to have found why it is not connected.
func waitWhy(b *bus) {
	for deadline := time.Now().Add(10 * time.Second); b.why.Load() == nil && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBusLogsAsyncErrors: messages a subscription drops because it fell
// behind are reported in the log rather than lost without a trace.
func TestBusLogsAsyncErrors(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)

	var out syncBuffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	cfg := &config.Config{}
	cfg.NATS.URL = ns.ClientURL()
	b, err := openBus(context.Background(), cfg, false, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()

	// A channel subscription with room for one message, never read.
	sub, err := b.nc.ChanSubscribe("probe.slow", make(chan *nats.Msg, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for range 10 {
		if err := b.nc.Publish("probe.slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "slow consumer") {
		if time.Now().After(deadline) {
			t.Fatalf("no async error logged; log:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "subject=probe.slow") {
		t.Errorf("the log does not name the subscription:\n%s", out.String())
	}
	// The connection's last error stays the slow consumer: the process's
	// own close of it is not logged as NATS giving up.
	b.close()
	if strings.Contains(out.String(), "nats connection closed") {
		t.Errorf("a close of the process's own was logged as NATS giving up:\n%s", out.String())
	}
}

// TestBusLogsNoToken: the "nats reconnected" line names the server
// without the token of a nats://token@host url.
func TestBusLogsNoToken(t *testing.T) {
	const token = "s3cret-nats-token"
	ns := startNATSWithToken(t, "127.0.0.1", -1, token)

	var out syncBuffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	cfg := &config.Config{}
	cfg.NATS.URL = strings.Replace(ns.ClientURL(), "nats://", "nats://"+token+"@", 1)
	b, err := openBus(context.Background(), cfg, false, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	id, err := b.nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.DisconnectClientByID(id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "nats reconnected") {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect logged; log:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(out.String(), token) || !strings.Contains(out.String(), ns.ClientURL()) {
		t.Errorf("the log names the server with its token, or not at all:\n%s", out.String())
	}
}

// TestBusSaysWhyNATSClosed: a server that refuses the token closes the
// connection for good; the log says why (not only "connection closed"),
// without the token.
func TestBusSaysWhyNATSClosed(t *testing.T) {
	ns := startNATSWithToken(t, "127.0.0.1", -1, "the-right-token")

	var out syncBuffer
	cfg := &config.Config{}
	cfg.NATS.URL = strings.Replace(ns.ClientURL(), "nats://", "nats://wr0ng-token@", 1)
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "nats connection closed") {
		if time.Now().After(deadline) {
			t.Fatalf("no closed line; log:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(strings.ToLower(out.String()), "authorization violation") || strings.Contains(out.String(), "wr0ng-token") {
		t.Errorf("the log does not say why, or names the token:\n%s", out.String())
	}
}

// TestBusErrorHidesUserInfo: a url that does not parse, as --nats-url
// may give one, is quoted in the error without its password or token.
func TestBusErrorHidesUserInfo(t *testing.T) {
	for _, u := range []string{"nats://user:s3cret@127.0.0.1:bad", "nats://s3cret@127.0.0.1:4222/%zz", "s3cret@[::1"} {
		cfg := &config.Config{}
		cfg.NATS.URL = u
		_, err := openCLIBus(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "connect to nats ") || !strings.Contains(err.Error(), "cannot be parsed") {
			t.Errorf("%s: error %v", u, err)
		}
	}
}

// TestCLIBusSaysWhatEachServerAnswered: with a list of servers, one down
// and one refusing the credentials, a command's error says what each
// answered: nats.go's "no servers available" or the refusal, in its random
// order, said one of them.
func TestCLIBusSaysWhatEachServerAnswered(t *testing.T) {
	ns := startNATSWithToken(t, "127.0.0.1", -1, "the-right-token")
	down := freeAddr(t)
	cfg := &config.Config{}
	cfg.NATS.URL = "nats://wr0ng-token@" + down + "," + strings.Replace(ns.ClientURL(), "nats://", "nats://wr0ng-token@", 1)
	for range 3 {
		_, err := openCLIBus(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err == nil || strings.Contains(err.Error(), "wr0ng-token") || !strings.Contains(err.Error(), down+": dial tcp") ||
			!strings.Contains(strings.ToLower(err.Error()), ns.Addr().String()+": nats: authorization violation") {
			t.Fatalf("error %v", err)
		}
	}
}

// TestCLIBusNamesTheServerThatRefused: a command whose NATS refuses its
// credentials names the server (without the credentials): "nats:
// Authorization Violation" alone named none.
func TestCLIBusNamesTheServerThatRefused(t *testing.T) {
	ns := startNATSWithToken(t, "127.0.0.1", -1, "the-right-token")
	cfg := &config.Config{}
	cfg.NATS.URL = strings.Replace(ns.ClientURL(), "nats://", "nats://wr0ng-token@", 1)
	_, err := openCLIBus(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil || strings.Contains(err.Error(), "wr0ng-token") || !strings.Contains(err.Error(), ns.Addr().String()) ||
		!strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Fatalf("error %v", err)
	}
}

// TestCLIBusLeavesStreamsAlone: a server's config sets the streams'
// settings; a command run with another config (logs, webhooks dlq) reads
// them without changing them.
func TestCLIBusLeavesStreamsAlone(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)

	srvCfg := &config.Config{}
	srvCfg.NATS.URL = ns.ClientURL()
	srvCfg.NATS.Stream.MaxAge = config.Duration(720 * time.Hour)
	b, err := openBus(ctx, srvCfg, false, log)
	if err != nil {
		t.Fatal(err)
	}
	b.close()

	cliCfg := &config.Config{}
	cliCfg.NATS.URL = ns.ClientURL()
	cliCfg.NATS.Stream.MaxAge = config.Duration(time.Hour)
	cb, err := openCLIBus(ctx, cliCfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.close()
	if err := cb.waitStreams(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]time.Duration{events.StreamName: 720 * time.Hour, events.DLQStreamName: 4 * 720 * time.Hour} {
		s, err := cb.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.MaxAge; got != want {
			t.Fatalf("stream %s: max age %s after a command with another config, want the server's %s", name, got, want)
		}
	}
}

// TestBusRemakesStreamsAfterReconnect: a NATS server that comes back on
// the same address without its store (no volume) has no streams; a
// server's bus makes them again once it has reconnected, without a
// restart, so the gateway's outbox drains and the workers' consumers can
// be made again.
func TestBusRemakesStreamsAfterReconnect(t *testing.T) {
	first := startNATS(t, "127.0.0.1", -1)
	port := first.Addr().(*net.TCPAddr).Port
	cfg := &config.Config{}
	cfg.NATS.URL = first.ClientURL()
	var out syncBuffer
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if err := b.waitStreams(context.Background()); err != nil {
		t.Fatal(err)
	}
	first.Shutdown()
	first.WaitForShutdown()

	// The same address, an empty store.
	startNATS(t, "127.0.0.1", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, errMain := b.js.Stream(ctx, events.StreamName)
		_, errDLQ := b.js.Stream(ctx, events.DLQStreamName)
		cancel()
		if errMain == nil && errDLQ == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("streams not made again on the new server: %v, %v; log:\n%s", errMain, errDLQ, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "nats reconnected") {
		t.Errorf("no reconnect logged:\n%s", out.String())
	}
}

// TestBusRemakesADeletedStream: a stream an operator deletes while the
// connection stays up (nothing reconnects) is made again by a serving
// process within streamCheckEvery, and said so; meanwhile a worker is not
// ready, saying why.
func TestBusRemakesADeletedStream(t *testing.T) {
	defer func(d time.Duration) { streamCheckEvery = d }(streamCheckEvery)
	streamCheckEvery = time.Hour
	ns := startNATS(t, "127.0.0.1", -1)
	cfg := &config.Config{}
	cfg.NATS.URL = ns.ClientURL()
	var out syncBuffer
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	ctx := context.Background()
	if err := b.waitStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.jetStreamReady(ctx); err != nil {
		t.Fatalf("ready with the streams there: %v", err)
	}
	if err := b.js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatal(err)
	}
	if err := b.jetStreamReady(ctx); err == nil || !strings.Contains(err.Error(), "the event stream LLMPROXY does not exist") {
		t.Fatalf("jetStreamReady = %v, want the missing stream named", err)
	}
	b.close()

	streamCheckEvery = 100 * time.Millisecond
	b, err = openBus(ctx, cfg, false, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if err := b.waitStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.jetStreamReady(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("stream not made again; log:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "an event stream was missing (deleted?): made again") {
		t.Errorf("the remake not logged:\n%s", out.String())
	}
}

// TestWorkerNotReadyBeforeItsStreams: a worker whose streams cannot be
// made (another stream captures the dead letters' subjects) consumes
// nothing, and /readyz says so, naming what stands in the way.
func TestWorkerNotReadyBeforeItsStreams(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LETTERS", Subjects: []string{"llmproxy.dlq.>"}}); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{}
	cfg.NATS.URL = ns.ClientURL()
	b, err := openBus(ctx, cfg, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	err = b.jetStreamReady(ctx)
	if err == nil || !strings.Contains(err.Error(), "the event streams are not made yet") || !strings.Contains(err.Error(), "stream LETTERS") {
		t.Fatalf("jetStreamReady = %v, want the streams not made and why", err)
	}
	if err := js.DeleteStream(ctx, "LETTERS"); err != nil {
		t.Fatal(err)
	}
	if err := b.waitStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.jetStreamReady(ctx); err != nil {
		t.Fatalf("jetStreamReady once the streams are made: %v", err)
	}
}

// TestBusStreamPersistMode: the event stream the bus makes, on the
// embedded server or an external one, is in the default persist mode (a
// write per stored event, so a failed write fails its publish and the
// outbox keeps the event), and one an earlier release made async is
// named in a WARN line.
func TestBusStreamPersistMode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		embedded bool
	}{
		{"embedded", true},
		{"external", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{DataDir: t.TempDir()}
			if !tc.embedded {
				cfg.NATS.URL = startNATS(t, "127.0.0.1", -1).ClientURL()
			}
			b, err := openBus(context.Background(), cfg, tc.embedded, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer b.close()
			if err := b.waitStreams(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{events.StreamName, events.DLQStreamName} {
				s, err := b.js.Stream(context.Background(), name)
				if err != nil {
					t.Fatal(err)
				}
				if got := s.CachedInfo().Config.PersistMode; got != jetstream.DefaultPersistMode {
					t.Errorf("%s: persist mode %s, want default", name, got)
				}
			}
		})
	}
	t.Run("async made earlier", func(t *testing.T) {
		url := startNATS(t, "127.0.0.1", -1).ClientURL()
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		async := events.StreamConfig(events.StreamOptions{})
		async.PersistMode = jetstream.AsyncPersistMode
		if _, err := js.CreateStream(context.Background(), async); err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		b, err := openBus(context.Background(), &config.Config{DataDir: t.TempDir(), NATS: config.NATS{URL: url}}, false, slog.New(slog.NewTextHandler(&out, nil)))
		if err != nil {
			t.Fatal(err)
		}
		defer b.close()
		if err := b.waitStreams(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "is in async persist mode") {
			t.Errorf("no warning about the async stream:\n%s", out.String())
		}
	})
}

// TestEmbeddedJetStreamOff: the embedded server's warnings and errors reach
// the process's log, and /readyz's check fails once the server has turned
// JetStream off (as it does for good when a store write fails), rather
// than saying ready while no event can be stored.
func TestEmbeddedJetStreamOff(t *testing.T) {
	var out syncBuffer
	b, err := openBus(context.Background(), &config.Config{DataDir: t.TempDir()}, true, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if err := b.waitStreams(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.ready(); err != nil {
		t.Fatalf("ready: %v", err)
	}
	b.embedded.ns.Errorf("probe %d", 7)
	b.embedded.ns.Errorf("%s - cid:%d - authentication error", "127.0.0.1:9", 3)
	if !strings.Contains(out.String(), `level=ERROR msg="nats: probe 7"`) ||
		!strings.Contains(out.String(), `level=WARN msg="nats: 127.0.0.1:9 - cid:3 - authentication error"`) {
		t.Errorf("the server's error (ERROR) or a client's (WARN) is not in the log:\n%s", out.String())
	}
	if err := b.embedded.ns.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	if err := b.ready(); err == nil || !strings.Contains(err.Error(), "turned JetStream off") {
		t.Fatalf("ready with JetStream off: %v", err)
	}
}

// TestEmbeddedStoreWriteFailed: once the embedded server has failed to
// write a store (a full data_dir), /readyz's check says so and that a
// restart is what publishes the events again: the server fails every write
// of that store after it, even once data_dir has room, while JetStream stays
// on; the check said only that events had not been published for a while.
func TestEmbeddedStoreWriteFailed(t *testing.T) {
	var out syncBuffer
	b, err := openBus(context.Background(), &config.Config{DataDir: t.TempDir()}, true, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if err := b.waitStreams(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The server's words for it (its filestore's).
	b.embedded.ns.Errorf("Critical write error: %v", "write /data/nats/jetstream/$G/streams/LLMPROXY/msgs/1.blk: no space left on device")
	err = b.ready()
	if err == nil || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), "restart llmproxy") {
		t.Fatalf("ready after a failed store write: %v", err)
	}
}

// TestJetStreamReady: a worker's readiness asks the server for JetStream:
// a server without it is connected but not ready.
func TestJetStreamReady(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)
	plain := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1})
	for _, c := range []struct {
		name, url string
		ok        bool
	}{{"jetstream", ns.ClientURL(), true}, {"no jetstream", plain.ClientURL(), false}} {
		t.Run(c.name, func(t *testing.T) {
			b, err := connectBus(context.Background(), &config.Config{}, c.url, nil, nil, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer b.close()
			if err := b.ready(); err != nil {
				t.Fatalf("ready: %v", err)
			}
			err = b.jetStreamReady(context.Background())
			if c.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), "jetstream")) {
				t.Fatalf("jetStreamReady = %v, want ok %v", err, c.ok)
			}
		})
	}
}

// TestBusStartsWithoutWaitingForADeadNATS: a process whose NATS does not
// answer at start (down, or taking connections and saying nothing) goes on
// at once, its streams made in the background once NATS answers, instead
// of first waiting for the streams on a connection that is not there.
func TestBusStartsWithoutWaitingForADeadNATS(t *testing.T) {
	ln := silentListener(t)
	var out syncBuffer
	cfg := &config.Config{}
	cfg.NATS.URL = "nats://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := openBus(ctx, cfg, false, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if !strings.Contains(out.String(), `event streams not ready yet; retrying in the background" err="nats is not connected yet"`) {
		t.Fatalf("log:\n%s\nwant the streams left to the background, NATS not answering", out.String())
	}
	select {
	case <-b.streams:
		t.Fatal("streams said ready with no NATS")
	default:
	}
}

// freezableProxy forwards TCP connections to target until frozen, then
// holds them open without passing a byte, as a stopped process's sockets do.
type freezableProxy struct {
	ln     net.Listener
	frozen chan struct{}
}

func newFreezableProxy(t *testing.T, target string) *freezableProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezableProxy{ln: ln, frozen: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			select {
			case <-p.frozen:
				return // holds both ends open, passing nothing
			default:
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	return p
}

// TestBusLeavesAFrozenServer: a server that stops answering without
// closing the connection is left for another server of the URL list
// within a few ping intervals, not after nats.go's default of minutes.
func TestBusLeavesAFrozenServer(t *testing.T) {
	old := pingInterval
	pingInterval = 200 * time.Millisecond
	t.Cleanup(func() { pingInterval = old })
	a, b := startNATS(t, "127.0.0.1", -1), startNATS(t, "127.0.0.1", -1)
	proxy := newFreezableProxy(t, a.Addr().String())
	cfg := &config.Config{}
	cfg.NATS.URL = "nats://" + proxy.ln.Addr().String() + ",nats://" + b.Addr().String()
	var out syncBuffer
	bus, err := connectBus(context.Background(), cfg, cfg.NATS.URL, nil, []nats.Option{nats.DontRandomize()}, true, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.close()
	if got := bus.nc.ConnectedAddr(); got != proxy.ln.Addr().String() {
		t.Fatalf("connected to %s, want the first server (through the proxy)", got)
	}
	close(proxy.frozen)
	deadline := time.Now().Add(10 * time.Second)
	for bus.nc.ConnectedAddr() != b.Addr().String() {
		if time.Now().After(deadline) {
			t.Fatalf("still on %q 10 s after its server froze; log:\n%s", bus.nc.ConnectedAddr(), out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBusSaysWhyNATSIsNotConnected: a connection nats.go cannot make for a
// reason it reports to no callback (a TLS server whose certificate is not
// trusted) is explained: a WARN line and /readyz name the failure.
func TestBusSaysWhyNATSIsNotConnected(t *testing.T) {
	// A server whose certificate the client does not trust: the test's
	// CA is not the system's.
	pki := newTestPKI(t)
	ns := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pki.server}}, TLSTimeout: 2})
	var out syncBuffer
	cfg := &config.Config{}
	cfg.NATS.URL = "tls://" + ns.Addr().String()
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	waitWhy(b)
	if err := b.ready(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("ready = %v, want the certificate's failure", err)
	}
	if !strings.Contains(out.String(), "nats is not connected; retrying") || !strings.Contains(out.String(), "certificate") {
		t.Fatalf("log:\n%s\nwant a WARN naming the certificate's failure", out.String())
	}
}

// TestBusSaysNATSRefusedTheConnection: nats.go calls every refused dial "no
// servers available"; the reason given is the dial's own.
func TestBusSaysNATSRefusedTheConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := &config.Config{}
	cfg.NATS.URL = "nats://" + addr
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	waitWhy(b)
	if err := b.ready(); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("ready = %v, want the refused connection", err)
	}
}

// silentListener is a listener that takes connections and never says a
// word, as a stopped server's socket does; closed when the test ends.
func silentListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return ln
}

// TestConnectErrorQuotesNoPassword: a NATS url that does not parse (a '#'
// or '/' left in its password) is refused without quoting any part of it;
// Go's parser quotes what follows the user name as a port.
func TestConnectErrorQuotesNoPassword(t *testing.T) {
	for _, u := range []string{"nats://user:Wrong#Pw-SECRET@127.0.0.1:4222", "nats://user:Wrong/Pw-SECRET@127.0.0.1:4222"} {
		_, err := nats.Connect(u, nats.Timeout(time.Second))
		if err == nil {
			t.Fatalf("%s: connected", u)
		}
		if msg := connectError(err).Error(); strings.Contains(msg, "Wrong") || strings.Contains(msg, "SECRET") || !strings.Contains(msg, "cannot be parsed") {
			t.Errorf("%s: %s", u, msg)
		}
	}
}
