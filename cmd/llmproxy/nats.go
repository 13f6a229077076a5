package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
)

// bus is the process's connection to NATS JetStream, and the embedded
// server when the process runs one.
type bus struct {
	embedded *embeddedServer
	nc       *nats.Conn
	js       jetstream.JetStream
	// streams is closed once the LLMPROXY and LLMPROXY_DLQ streams exist.
	streams chan struct{}
	// closing is set once the process closes the connection itself: the
	// close is then no news, whatever error the connection last had.
	closing atomic.Bool
	// why is what a connection of diagnose's own last met while nc was
	// not connected (nil: nothing, or connected).
	why atomic.Pointer[string]
	// lost is closed when the NATS client gives the connection up for
	// good (the server refused the credentials, say), not by the process.
	lost     chan struct{}
	lostOnce sync.Once
	// refused is set while the servers refuse the connection's
	// credentials (cleared by a reconnect): the client then waits
	// refusedWait between its tries, not reconnectWait.
	refused atomic.Bool
	// conn is nc, for the reconnect delay, which may run before nc is set.
	conn atomic.Pointer[nats.Conn]
	// streamsErr is why the streams could not be made yet, while streams
	// is open.
	streamsErr atomic.Pointer[string]
}

// reconnectWait and reconnectJitter pace the client's tries to reconnect;
// refusedWait replaces them while the servers refuse the credentials, for a
// client that keeps trying then (keepTrying).
const (
	reconnectWait   = 250 * time.Millisecond
	reconnectJitter = 100 * time.Millisecond
	refusedWait     = 2 * time.Second
)

// keepTrying is the option of a process that serves clients (a gateway):
// nats.go gives a connection up for good once a server refuses its
// credentials twice in a row, which would leave the gateway without NATS
// until a restart even after the servers take them again (a credential
// change rolled out to the servers in the wrong order, say). With it the
// client keeps trying, every refusedWait, and the outbox keeps the events
// meanwhile.
func keepTrying() nats.Option { return nats.IgnoreAuthErrorAbort() }

// isRefusal tells whether err is a server's refusal of the credentials.
func isRefusal(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// openBus connects to cfg's NATS, or starts the embedded server under
// data_dir when nats.url is empty and embedded is allowed (llmproxy serve
// --target all); that server also accepts the CLI's clients (embedded.go).
//
// extra is added to the options of a connection to nats.url (keepTrying).
func openBus(ctx context.Context, cfg *config.Config, allowEmbedded bool, log *slog.Logger, extra ...nats.Option) (*bus, error) {
	if cfg.NATS.URL != "" {
		return connectBus(ctx, cfg, cfg.NATS.URL, nil, extra, true, log)
	}
	if !allowEmbedded {
		return nil, fmt.Errorf("nats.url is required for this target (the embedded server runs only with --target all)")
	}
	if err := os.MkdirAll(cfg.DataPath(), 0o750); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.DataPath(), err)
	}
	lock, err := lockStore(ctx, cfg, 0)
	if errors.Is(err, errStoreBusy) {
		// Another serve, or a CLI command that opened the store itself.
		log.Warn("data_dir is in use by another process; waiting for it", "data_dir", cfg.DataPath(),
			"pid", storeHolder(cfg), "wait", serveLockWait.String())
		lock, err = lockStore(ctx, cfg, serveLockWait)
	}
	if err != nil {
		return nil, err
	}
	e, err := startEmbedded(cfg, lock, true)
	if err != nil {
		return nil, err
	}
	e.logTo(log)
	log.Info("embedded nats listening", "url", e.url(), "client_file", e.clientFile)
	return connectBus(ctx, cfg, "", e, nil, true, log)
}

// openCLIBus connects a CLI command to cfg's NATS: nats.url, else the
// embedded server of data_dir, a running serve's or one of the command's
// own (reachEmbedded). Unlike a server's, the connection is not retried in
// the background: a server that does not answer is an error at once.
func openCLIBus(ctx context.Context, cfg *config.Config, log *slog.Logger) (*bus, error) {
	once := []nats.Option{nats.RetryOnFailedConnect(false)}
	if cfg.NATS.URL != "" {
		return connectBus(ctx, cfg, cfg.NATS.URL, nil, once, false, log)
	}
	return reachEmbedded(ctx, cfg, once, log)
}

// pingInterval is how often the client pings its server (see connectBus).
var pingInterval = 5 * time.Second

// connectBus connects to url, or in process to e when e is set (and shuts
// e down if that fails), and makes sure the event streams exist. extra
// options come after the defaults and override them. update is for
// servers: a stream whose settings differ from cfg's is updated to them; a
// command (update false) only creates missing streams, so that running it
// with another config never changes the servers' streams.
func connectBus(ctx context.Context, cfg *config.Config, url string, e *embeddedServer, extra []nats.Option, update bool, log *slog.Logger) (*bus, error) {
	b := &bus{streams: make(chan struct{}), embedded: e, lost: make(chan struct{})}
	// reconnected runs after every reconnect, once the streams can be made.
	var reconnected atomic.Pointer[func()]
	opts := []nats.Option{
		nats.Name("llmproxy"),
		// A server that stops answering without closing the connection
		// (a frozen process, a paused VM, a stuck disk) is left for
		// another of the cluster after pingInterval × (1 + 2): nats.go's
		// default, 2 minutes × 3, would stall the meters, the notifier
		// and the gateway's publishing for 6 minutes while the other
		// nodes serve.
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(2),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(func(int) time.Duration {
			// A refusal while connecting for the first time reaches
			// no handler: the connection's last error tells it.
			if c := b.conn.Load(); c != nil {
				switch err := c.LastError(); {
				case isRefusal(err):
					if !b.refused.Swap(true) {
						log.Warn("nats refused the credentials", "err", err)
					}
				default:
					// The last try failed otherwise (a server down,
					// whose failure nats.go leaves no error for): the
					// refusal has passed.
					b.refused.Store(false)
				}
			}
			if b.refused.Load() {
				return refusedWait
			}
			return reconnectWait + rand.N(reconnectJitter)
		}),
		// The first connection, made late (RetryOnFailedConnect): no
		// longer refused.
		nats.ConnectHandler(func(*nats.Conn) { b.refused.Store(false) }),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			b.refused.Store(false)
			log.Info("nats reconnected", "url", serverURL(c.ConnectedUrl()))
			if f := reconnected.Load(); f != nil {
				go (*f)()
			}
		}),
		// A connection nats.go gives up on (the server refused the
		// credentials, say) is closed for good: say why, once.
		nats.ClosedHandler(func(c *nats.Conn) {
			// LastError stays set after the trouble it names has
			// passed (a slow consumer, a reconnect): it says why only
			// when the process did not close the connection itself.
			if err := c.LastError(); err != nil && !b.closing.Load() {
				log.Error("nats connection closed; no more events are published or consumed until a restart", "err", err)
				b.lostOnce.Do(func() { close(b.lost) })
			}
		}),
		// Asynchronous errors, such as messages a subscription dropped
		// because it fell behind (slow consumer), would otherwise go
		// unseen.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			if isRefusal(err) {
				// Each try a client that keeps trying makes meets it:
				// said once, until a reconnect.
				if !b.refused.Swap(true) {
					log.Warn("nats refused the credentials", "err", err)
				}
				return
			}
			log.Warn("nats async error", "err", err)
		}),
	}
	if e != nil {
		url = e.url()
		opts = append(opts, nats.InProcessServer(e.ns), e.auth())
	} else if cfg.NATS.URL != "" {
		// The servers of nats.url (not the embedded one the CLI reaches
		// by its own URL).
		o, err := natsAccess(cfg.NATS)
		if err != nil {
			b.close()
			return nil, err
		}
		extra = append(slices.Clone(extra), o...)
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(url, opts...)
	if e == nil && err != nil && (errors.Is(err, nats.ErrNoServers) || isRefusal(err)) {
		// A CLI command's connection, made once, that no server took:
		// nats.go says "no servers available", or the error of the
		// server it tried last, in its random order. Each server's
		// own error says what each did.
		err = fmt.Errorf("%w (%s)", err, serversSay(url, extra))
	}
	if err != nil {
		b.close()
		if e != nil {
			return nil, fmt.Errorf("connect to nats: %w", connectError(err))
		}
		return nil, fmt.Errorf("connect to nats %s: %w", shownServers(url), connectError(err))
	}
	b.nc = nc
	b.conn.Store(nc)
	if e == nil {
		go b.diagnose(url, extra, log)
	}
	// A publish ack the server never sends must not stay pending forever:
	// the gateway's outbox retries it.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		b.close()
		return nil, err
	}
	b.js = js
	so := events.StreamOptions{MaxAge: cfg.NATS.Stream.MaxAge.D(), Replicas: cfg.NATS.Stream.Replicas, Log: log}
	// The stream may not be reachable yet (NATS starting, or down): keep
	// trying in the background rather than refuse to start, so a gateway
	// can serve and keep its events in the outbox meanwhile.
	ensure := events.EnsureStreams
	if !update {
		ensure = events.CreateStreams
	}
	if nc.IsConnected() {
		ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = ensure(ectx, js, so)
		cancel()
	} else {
		// The first connection failed (nats.go goes on trying): waiting
		// for the streams would only hold the start.
		// diagnose says why in a moment.
		err = errors.New("nats is not connected yet")
	}
	// A server that comes back may have lost its store (a node without a
	// volume, say), and the streams with it: they are made again after
	// every reconnect, so that the gateway's outbox drains and the workers
	// re-create their consumers without a restart. Making streams that
	// exist changes nothing.
	var again atomic.Bool
	remake := func() {
		if !again.CompareAndSwap(false, true) {
			return
		}
		defer again.Store(false)
		for i := 0; ctx.Err() == nil; i++ {
			ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := ensure(ectx, js, so)
			cancel()
			if err == nil {
				return
			}
			if i == 0 {
				log.Warn("event streams not checked after the reconnect; retrying", "err", err)
			}
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
	reconnected.Store(&remake)
	if update {
		go b.watchStreams(ctx, so, streamCheckEvery, log)
	}
	if err == nil {
		warnAsyncStream(ctx, js, log)
		close(b.streams)
	} else {
		// A JetStream cluster that has just started needs some seconds to
		// elect its meta leader before it can create a stream.
		msg := err.Error()
		b.streamsErr.Store(&msg)
		log.Warn("event streams not ready yet; retrying in the background", "err", err)
		go func() {
			for ctx.Err() == nil {
				time.Sleep(time.Second)
				ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := ensure(ectx, js, so)
				cancel()
				if err == nil {
					log.Info("event streams ready")
					warnAsyncStream(ctx, js, log)
					close(b.streams)
					return
				}
				msg := err.Error()
				b.streamsErr.Store(&msg)
				log.Debug("event streams not ready yet", "err", err)
			}
		}()
	}
	return b, nil
}

// streamCheckEvery is how often a serving process checks that the event
// streams it made still exist.
var streamCheckEvery = 10 * time.Second

// watchStreams makes the event streams again when one has gone while the
// connection stayed up (an operator deleted it: nothing reconnects then),
// every streamCheckEvery once they were ready, so that the gateways' outboxes
// drain and the workers' consumers are made again without a restart. A
// stream it cannot make is logged when the reason changes. It returns when
// ctx is done or b is closed.
func (b *bus) watchStreams(ctx context.Context, so events.StreamOptions, every time.Duration, log *slog.Logger) {
	select {
	case <-b.streams:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		if b.closing.Load() || b.nc.IsClosed() {
			return
		}
		if !b.nc.IsConnected() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		made, err := events.MakeMissingStreams(cctx, b.js, so)
		cancel()
		if len(made) > 0 {
			log.Warn("an event stream was missing (deleted?): made again", "streams", strings.Join(made, ","))
		}
		switch {
		case err == nil:
			last = ""
		case err.Error() != last && ctx.Err() == nil:
			last = err.Error()
			log.Warn("an event stream is missing and could not be made again; retrying", "err", err)
		}
	}
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

// jetStreamReady reports whether the NATS server answers JetStream
// requests: a worker (meter, notifier, recorder) connected to a server
// without JetStream, or whose JetStream cluster has no quorum, is
// connected and can do nothing. It asks the server, so it is for /readyz,
// not for every request.
func (b *bus) jetStreamReady(ctx context.Context) error {
	if b.js == nil {
		return errors.New("nats jetstream: not connected")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("nats jetstream: %w", err)
	}
	// A worker starts once both streams exist (waitStreams).
	select {
	case <-b.streams:
	default:
		why := "not checked yet"
		if e := b.streamsErr.Load(); e != nil {
			why = *e
		}
		return fmt.Errorf("the event streams are not made yet, so nothing is consumed (%s); retrying every second", why)
	}
	// A worker whose stream has gone reads nothing until it is made again.
	if _, err := b.js.Stream(ctx, events.StreamName); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("the event stream %s does not exist (deleted, or another stream captures its subjects: "+
				"see the log); it is made again within %s when it can be", events.StreamName, streamCheckEvery)
		}
		return fmt.Errorf("nats jetstream: stream %s: %w", events.StreamName, err)
	}
	return nil
}

// ready reports whether NATS is connected and, for the embedded server,
// whether its JetStream runs: the server turns JetStream off for good when
// a store write fails (a full disk), and events then only wait in the
// outbox until a restart.
func (b *bus) ready() error {
	if b.nc != nil && b.nc.IsClosed() && b.nc.LastError() != nil {
		return fmt.Errorf("nats connection closed (%v); restart to connect again", b.nc.LastError())
	}
	if b.nc == nil || !b.nc.IsConnected() {
		if why := b.why.Load(); why != nil {
			return fmt.Errorf("nats is not connected: %s", *why)
		}
		return fmt.Errorf("nats is not connected")
	}
	if b.embedded != nil && !b.embedded.ns.JetStreamEnabled() {
		return fmt.Errorf("the embedded NATS server has turned JetStream off (a write to data_dir failed: a full disk?); events wait in the outbox until llmproxy is restarted")
	}
	if b.embedded != nil {
		if f := b.embedded.storeFailed.Load(); f != nil {
			return fmt.Errorf("the embedded NATS server could not write its store in data_dir at %s (%s): what it could not store waits, "+
				"events in the outbox; once data_dir has room again, restart llmproxy (the server does not try a store that failed again)",
				f.at.UTC().Format(time.RFC3339), f.msg)
		}
	}
	return nil
}

// natsAccess are the options of n's credentials and TLS files.
func natsAccess(n config.NATS) ([]nats.Option, error) {
	var opts []nats.Option
	if n.Credentials != "" {
		if _, err := os.Stat(n.Credentials); err != nil {
			return nil, fmt.Errorf("nats.credentials: %w", err)
		}
		opts = append(opts, nats.UserCredentials(n.Credentials))
	}
	if n.TLS.IsSet() {
		c, err := n.TLS.Load()
		if err != nil {
			return nil, fmt.Errorf("nats.tls: %w", err)
		}
		opts = append(opts, nats.Secure(c))
	}
	return opts, nil
}

// diagnoseEvery is how often diagnose asks, while the connection is down.
const diagnoseEvery = 10 * time.Second

// diagnose finds out why b's connection to url is down while it is: nats.go
// retries in silence (no callback reports a TLS handshake that failed, or a
// server that refuses the credentials before the connection is up), so every
// diagnoseEvery it makes a connection of its own, logs what that met when it
// changes, and keeps it for ready(). It returns once b is closed.
func (b *bus) diagnose(url string, extra []nats.Option, log *slog.Logger) {
	var last string
	down := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for range tick.C {
		if b.closing.Load() || b.nc.IsClosed() {
			return
		}
		if b.nc.IsConnected() {
			if last != "" {
				b.why.Store(nil)
				last = ""
			}
			down = 0
			continue
		}
		if down++; down%int(diagnoseEvery/time.Second) != 2 {
			// First after 2 s down: a reconnect takes about that.
			continue
		}
		why := "no error; the connection is being made again"
		if err := probeNATS(url, extra, 5*time.Second); err != nil {
			why = err.Error()
		}
		if why != last && !b.nc.IsConnected() {
			log.Warn("nats is not connected; retrying", "err", why)
			b.why.Store(&why)
			last = why
		}
	}
}

// probeNATS connects to url once, as a bus does with extra, within timeout,
// and reports what failed.
func probeNATS(url string, extra []nats.Option, timeout time.Duration) error {
	opts := append(slices.Clone(extra), nats.Name("llmproxy-diagnose"), nats.RetryOnFailedConnect(false),
		nats.MaxReconnects(0), nats.Timeout(timeout), nats.NoCallbacksAfterClientClose())
	nc, err := nats.Connect(url, opts...)
	if errors.Is(err, nats.ErrNoServers) {
		// nats.go's word for every server refusing the connection (or
		// not resolving): the first server's own error says which.
		if derr := dialServers(url, timeout); derr != nil {
			return derr
		}
	}
	if err != nil {
		return connectError(err)
	}
	nc.Close()
	return nil
}

// dialServers dials the servers of servers, nats.url's comma-separated
// list, and returns the first's error when none answers.
func dialServers(servers string, timeout time.Duration) error {
	var first error
	for s := range strings.SplitSeq(servers, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Host == "" {
			continue
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "4222")
		}
		c, err := net.DialTimeout("tcp", host, timeout)
		if err == nil {
			c.Close()
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func (b *bus) close() {
	b.closing.Store(true)
	if b.nc != nil {
		_ = b.nc.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !b.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		b.nc.Close()
	}
	if b.embedded != nil {
		b.embedded.shutdown()
	}
}

// serverURL returns raw, a NATS server's URL, fit for a log or an error:
// without its user info. nats.go's ConnectedUrlRedacted hides a password
// (nats://user:pass@host) but not a token, which a URL carries as its user
// (nats://token@host). It works on the text, for a URL that does not parse
// (an error says which) may hold them all the same.
func serverURL(raw string) string {
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 {
		start = i + len("://")
	}
	if at := strings.LastIndexByte(raw[start:], '@'); at >= 0 {
		return raw[:start] + raw[start+at+1:]
	}
	return raw
}

// serversSay connects to each server of servers, nats.url's list, once
// with extra's credentials, and says what each answered.
func serversSay(servers string, extra []nats.Option) string {
	var out []string
	for s := range strings.SplitSeq(servers, ",") {
		s = strings.TrimSpace(s)
		what := "took the connection"
		if err := probeNATS(s, extra, 2*time.Second); err != nil {
			what = err.Error()
		}
		out = append(out, serverURL(s)+": "+what)
	}
	return strings.Join(out, "; ")
}

// shownServers is nats.url's list of servers as an error may show it:
// each without its credentials (serverURL).
func shownServers(servers string) string {
	var out []string
	for s := range strings.SplitSeq(servers, ",") {
		out = append(out, serverURL(strings.TrimSpace(s)))
	}
	return strings.Join(out, ",")
}

// connectError is err, from nats.Connect, without the URL a parse error
// quotes: a url given on the command line (--nats-url) is not checked as
// the config's is before it gets there, and one that does not parse may
// hold its password anywhere (a "#" in it ends what is parsed, and the
// parser's own message quotes the rest as a port).
func connectError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return errors.New("the NATS url cannot be parsed: percent-encode any '/', '?', '#', '@' or ':' in its user name or password")
	}
	return err
}

// warnAsyncStream says so when the event stream is in JetStream's async
// persist mode, which an earlier release made the embedded server's in:
// such a stream acknowledges an event before writing it, and a write that
// then fails (a full disk) loses an event the outbox has let go of. A
// stream's mode is fixed when it is made, so it cannot be changed here.
func warnAsyncStream(ctx context.Context, js jetstream.JetStream, log *slog.Logger) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ictx, events.StreamName)
	if err != nil || s.CachedInfo().Config.PersistMode != jetstream.AsyncPersistMode {
		return
	}
	log.Warn("event stream " + events.StreamName + " is in async persist mode, made so by an earlier release: an event the server " +
		"acknowledged can be lost if writing it then fails (a full disk); the mode is fixed when the stream is made")
}
