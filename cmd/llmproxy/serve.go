package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway"
	"github.com/llmproxy/llmproxy/services/meter"
	"github.com/llmproxy/llmproxy/services/notifier"
)

// earlyHUP holds a SIGHUP that came before serve caught its own: the
// signal's default action ends the process, and reading the config (its
// Lua scripts compiled) and starting take a while.
var earlyHUP = make(chan os.Signal, 1)

func cmdServe(args []string) int {
	signal.Notify(earlyHUP, syscall.SIGHUP)
	defer signal.Stop(earlyHUP)
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	target := fs.String("target", "all", "role to run: all, gateway, meter, notifier or recorder")
	adminListen := fs.String("admin-listen", "", "address of the admin listener: /healthz, /readyz, /metrics and the admin API (overrides admin.listen); "+
		"the only place a meter, notifier or recorder serves them")
	if code, ok := parseOnlyFlags(fs, args, os.Stdout, os.Stderr); !ok {
		return code
	}
	if *cfgPath == "" {
		fmt.Fprintln(os.Stderr, "llmproxy serve: --config is required")
		return 2
	}
	switch *target {
	case "all", "gateway", "meter", "notifier", "recorder":
	default:
		fmt.Fprintf(os.Stderr, "llmproxy serve: unknown target %q (want all, gateway, meter, notifier or recorder)\n", *target)
		return 2
	}
	if *adminListen != "" {
		if err := config.CheckAddr(*adminListen); err != nil {
			fmt.Fprintln(os.Stderr, "llmproxy serve: --admin-listen:", err)
			return 2
		}
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := adminListenApart(cfg, *target, *adminListen); err != nil {
		fmt.Fprintln(os.Stderr, "llmproxy serve:", err)
		return 1
	}
	if err := checkTarget(cfg, *target); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, "llmproxy serve:", line)
		}
		return 1
	}
	log, closeLog := newLogger(cfg.Logging.Level, os.Stderr)
	defer closeLog()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, *cfgPath, *target, *adminListen, log); err != nil {
		log.Error("llmproxy stopped", "target", *target, "err", err)
		return 1
	}
	return 0
}

// newLogger returns the process's JSON logger writing to w through a
// logWriter, and the function that flushes it and stops its flusher; call
// that before the process exits so that no line is lost.
func newLogger(level string, w io.Writer) (*slog.Logger, func()) {
	var l slog.Level
	switch level {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	lw := newLogWriter(w, logFlushInterval)
	h := slog.NewJSONHandler(lw, &slog.HandlerOptions{Level: l})
	return slog.New(flushingHandler{Handler: h, w: lw}), lw.Close
}

// logFlushInterval bounds how long a logged line waits in the buffer.
const logFlushInterval = 100 * time.Millisecond

// logWriter buffers log lines and writes them out every interval, when the
// buffer fills, at a warning or worse, and on Close. The access log writes
// one line per request; one write(2) per line cost the request path more
// than the line's encoding. It is safe for concurrent use.
type logWriter struct {
	mu   sync.Mutex
	bw   *bufio.Writer
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func newLogWriter(w io.Writer, interval time.Duration) *logWriter {
	lw := &logWriter{bw: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go lw.flushLoop(interval)
	return lw
}

// Write buffers p, which slog hands over as whole lines.
func (lw *logWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.bw.Write(p)
}

// Flush writes out every buffered line.
func (lw *logWriter) Flush() {
	lw.mu.Lock()
	_ = lw.bw.Flush()
	lw.mu.Unlock()
}

func (lw *logWriter) flushLoop(interval time.Duration) {
	defer close(lw.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			lw.Flush()
		case <-lw.stop:
			return
		}
	}
}

// Close stops the flusher and writes out what is buffered. Lines logged
// after Close are still written, at once: Close leaves the buffer flushed
// and every later Write of a warning or worse flushes it again.
func (lw *logWriter) Close() {
	lw.once.Do(func() {
		close(lw.stop)
		<-lw.done
	})
	lw.Flush()
}

// flushingHandler flushes its logWriter after every record at WARN or
// above, so that warnings and errors are on disk the moment they are logged
// (and before a crash that may follow them).
type flushingHandler struct {
	slog.Handler
	w *logWriter
}

func (h flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		h.w.Flush()
	}
	return err
}

func (h flushingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushingHandler{Handler: h.Handler.WithAttrs(attrs), w: h.w}
}

func (h flushingHandler) WithGroup(name string) slog.Handler {
	return flushingHandler{Handler: h.Handler.WithGroup(name), w: h.w}
}

// carryHUP moves a SIGHUP that early caught before serve took over into
// hup, unless hup holds one already: between signal.Notify(hup) and
// signal.Stop(early) one signal can reach both, and a blocking send into
// the full hup would hang the process before it serves or heeds SIGTERM.
// One reload is all that any number of pending SIGHUPs asks for.
func carryHUP(early <-chan os.Signal, hup chan os.Signal) {
	select {
	case sig := <-early:
		select {
		case hup <- sig:
		default:
		}
	default:
	}
}

// readyTimeout bounds a readiness check (/readyz).
const readyTimeout = 2 * time.Second

// readyWithin bounds the check ready to d: a store that takes connections
// but does not answer (a frozen Redis or NATS) fails the check once d has
// passed, not after its client's own timeouts (5 to 10 s), which a load
// balancer's probe with a shorter timeout would count as a failure of the
// process itself. ready asks every store in turn, naming each before it
// asks it and noting what each that failed said (readyProgress), so that
// the failure names every store that is not ready and the one that did not
// answer. The check goes on in the background until its client gives up.
func readyWithin(d time.Duration, ready func(ctx context.Context, p *readyProgress)) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		p := &readyProgress{}
		done := make(chan struct{})
		go func() {
			ready(ctx, p)
			close(done)
		}()
		select {
		case <-done:
			return p.err("")
		case <-ctx.Done():
			p.mu.Lock()
			name := p.store
			p.mu.Unlock()
			if name == "" {
				name = "its stores"
			}
			return p.err(fmt.Sprintf("no answer within %s from %s", d, name))
		}
	}
}

// readyProgress is how far a readiness check has come: the store it is
// asking and what the stores that failed said.
type readyProgress struct {
	mu     sync.Mutex
	store  string
	failed []string
}

// asking names the store asked next.
func (p *readyProgress) asking(store string) {
	p.mu.Lock()
	p.store = store
	p.mu.Unlock()
}

// fail notes what the store asked said.
func (p *readyProgress) fail(err error) {
	p.mu.Lock()
	p.failed = append(p.failed, err.Error())
	p.mu.Unlock()
}

// err is the check's error: every failure noted, and last, when not
// empty; nil for none.
func (p *readyProgress) err(last string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	all := p.failed
	if last != "" {
		all = append(all[:len(all):len(all)], last)
	}
	if len(all) == 0 {
		return nil
	}
	return errors.New(strings.Join(all, "; "))
}

// readyOf is the readiness check of one store, for readyWithin.
func readyOf(store string, ready func(context.Context) error) func(context.Context, *readyProgress) {
	return func(ctx context.Context, p *readyProgress) {
		p.asking(store)
		if err := ready(ctx); err != nil {
			p.fail(err)
		}
	}
}

// adminListenApart reports an --admin-listen address that would take the
// port of another listener target runs (the config file's own are
// checked with the file).
func adminListenApart(cfg *config.Config, target, adminListen string) error {
	if adminListen == "" {
		return nil
	}
	others := map[string]string{}
	if target == "all" || target == "gateway" {
		others["listen"] = cfg.Listen
	}
	if target == "all" {
		others["nats.embedded_listen"] = cfg.NATS.EmbeddedListen
	}
	for _, path := range []string{"listen", "nats.embedded_listen"} {
		if a := others[path]; a != "" && config.SameAddr(adminListen, a) {
			return fmt.Errorf("--admin-listen %q takes the port of %s (%q): give each listener its own", adminListen, path, a)
		}
	}
	return nil
}

// serve runs target until ctx is done, then shuts down in order: stop
// accepting, let in-flight requests finish (up to server.drain_timeout),
// flush events, stop the workers, close the stores. adminListen, when not
// empty, overrides admin.listen (--admin-listen), at start and for the
// config files SIGHUP reads.
func serve(ctx context.Context, cfg *config.Config, cfgPath, target, adminListen string, log *slog.Logger) error {
	if adminListen != "" {
		cfg.Admin.Listen = adminListen
	}
	// SIGHUP is caught from the start: its default action ends the
	// process, and starting (a first health round, a NATS or Redis that
	// does not answer) takes seconds. One that comes meanwhile is acted
	// on once the process serves.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	signal.Stop(earlyHUP)
	carryHUP(earlyHUP, hup)
	log = log.With("target", target)
	redis.SetLogger(newRedisLogger(log))
	runGateway := target == "all" || target == "gateway"
	runMeter := target == "all" || target == "meter"
	runNotifier := target == "all" || target == "notifier"
	runRec := target == "recorder" || (target == "all" && cfg.Logging.Postgres.URL != "")
	if !runGateway && cfg.Admin.Listen == "" {
		// A worker has no listener of its own. It gets no default address:
		// workers scale by running more of them, and on one host a fixed
		// port would let only the first one start.
		log.Warn("no admin listener: this worker serves no /healthz, /readyz or /metrics; " +
			"set admin.listen or pass --admin-listen ADDR, one address per process on a host")
	}

	if target == "gateway" && cfg.RateLimitEnabled() && cfg.RateLimit.Storage != "redis" {
		// A gateway of its own is one of several behind a balancer: each
		// would hold the limits for itself.
		log.Warn("rate_limit.storage is memory: this gateway holds its rate limits, concurrency and token reservations " +
			"for itself, so N gateways admit up to N times a key's limits; set rate_limit.storage: redis to share them")
	}
	if runGateway && cfg.AuthOffUnsaid() {
		log.Warn("authentication is off: no api_keys and auth.storage is file, so every client is served as anonymous, " +
			"with no per-key limit or quota; add api_keys, set auth.storage: redis, or set auth.enabled: false to say it is meant")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var keep []nats.Option
	if runGateway {
		// A gateway serves on without NATS (its outbox keeps the
		// events): it waits out a refusal of its credentials rather
		// than give the connection up.
		keep = append(keep, keepTrying())
	}
	b, err := openBus(ctx, cfg, target == "all", log, keep...)
	if err != nil {
		return err
	}
	defer b.close()

	var lh *ledgerHandle
	if runMeter || (runGateway && cfg.Redis.Enabled()) {
		if lh, err = openLedger(ctx, cfg, target == "all", false); err != nil {
			return err
		}
		defer lh.close()
		if lh.rdb != nil && (runMeter || cfg.RateLimitEnabled() && cfg.RateLimit.Storage == "redis") {
			// This process writes to Redis: a Redis that answers a
			// PING but refuses its writes or scripts (an ACL user
			// without them, a read-only replica, maxmemory reached)
			// fails every request or event, and /readyz says so.
			lh.ready = writeReady(lh.rdb, redisPrefix(cfg))
		}
		// A Redis that is down now is waited for as one that goes down
		// later is, rather than refused: a gateway refuses the requests
		// that need it with 503, a meter leaves its events in the
		// stream, /readyz says why, and both carry on on their own once
		// it answers. (Exiting would leave a gateway's outbox unsent and
		// its restart to a supervisor.)
		if err := readyWithin(time.Second, readyOf("Redis", lh.ready))(ctx); err != nil {
			log.Warn("redis is not ready; starting anyway, as if it had just gone away (/readyz fails until it is)", "err", err)
		}
		if n := cfg.Redis.WaitReplicas; n > 0 && lh.rdb != nil {
			if m, err := connectedReplicas(ctx, lh.rdb); err == nil && m != n {
				log.Warn("redis.wait_replicas is not the number of replicas the master has: with fewer replicas nothing waited for is confirmed "+
					"(meters apply nothing, releases are followed up in the background); with more, a failover to one that had not the writes still loses them",
					"wait_replicas", n, "replicas", m)
			}
		}
	}
	// A recorder on its own is ready when it can write to PostgreSQL as
	// well. Beside a gateway (target all) the request log is optional: a
	// database outage does not take the gateway out of its load balancer.
	var pg *pgReady
	if target == "recorder" {
		pg = &pgReady{}
	}
	// stopping is set once the process begins to shut down: its
	// listeners close, so a load balancer must stop sending to it now.
	var stopping atomic.Bool
	// meterReady is a meter's own half of /readyz (target meter): a Redis
	// that answers but cannot have a batch (no replica to confirm it with
	// redis.wait_replicas, say) leaves every event in the stream.
	var meterReady atomic.Pointer[meter.Meter]
	readyFn := readyWithin(readyTimeout, func(ctx context.Context, p *readyProgress) {
		if stopping.Load() {
			p.fail(errors.New("shutting down"))
			return
		}
		p.asking("NATS")
		if err := b.ready(); err != nil {
			p.fail(err)
		} else if !runGateway {
			// A worker connected to a NATS whose JetStream does not
			// answer cannot pull; a gateway's outbox keeps its
			// events, and its stall says so (Gateway.EventsReady).
			if err := b.jetStreamReady(ctx); err != nil {
				p.fail(err)
			}
		}
		if lh != nil && lh.ready != nil {
			p.asking("Redis")
			if err := lh.ready(ctx); err != nil {
				p.fail(fmt.Errorf("redis: %w", err))
			}
		}
		if pg != nil {
			readyOf("PostgreSQL", pg.ready)(ctx, p)
		}
		if m := meterReady.Load(); m != nil {
			if err := m.Ready(); err != nil {
				p.fail(err)
			}
		}
	})

	workers, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWorkers()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	// startWorker runs a consumer once the event streams exist: without
	// them a worker started beside a JetStream cluster that is still
	// forming, or a NATS that is down, would exit. The gateway does not
	// wait for them (its outbox keeps the events), so the single binary
	// serves meanwhile; a stop while waiting is a clean exit.
	startWorker := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.waitStreams(workers); err != nil {
				return
			}
			if err := run(workers); err != nil && !errors.Is(err, context.Canceled) {
				if !strings.HasPrefix(err.Error(), name+": ") {
					err = fmt.Errorf("%s: %w", name, err)
				}
				errc <- err
			}
		}()
	}

	if !runGateway {
		// A worker has nothing to do once its NATS connection is given
		// up for good: it stops, so that what runs it starts it again
		// (a gateway goes on serving, its events kept in its outbox).
		go func() {
			select {
			case <-b.lost:
				errc <- fmt.Errorf("nats connection closed for good (%v): a %s has nothing to do without it; start it again once NATS takes the config's credentials", b.nc.LastError(), target)
			case <-workers.Done():
			}
		}()
	}

	if runMeter {
		mopts := meter.Options{Logger: log, Registerer: reg}
		if lh.local != nil {
			mopts.AckWait = localMeterAckWait
		}
		m, err := meter.New(b.js, lh.store, mopts)
		if err != nil {
			return err
		}
		if target == "meter" {
			// Beside a gateway (target all) the meter's backlog does not
			// take the gateway out of its load balancer.
			meterReady.Store(m)
		}
		run := m.Run
		if lh.fresh {
			run = func(ctx context.Context) error {
				rebuildLostLedger(ctx, b.js, m.ConsumerConfig().Durable, cfg.DataPath("ledger.db"), log)
				return m.Run(ctx)
			}
		}
		startWorker("meter", run)
	}
	if runNotifier {
		eps, err := endpointsOf(cfg)
		if err != nil {
			return err
		}
		n, err := notifier.New(b.js, eps, notifier.Options{Logger: log, Registerer: reg})
		if err != nil {
			return err
		}
		startWorker("notifier", n.Run)
	}

	if runRec {
		startWorker("recorder", func(ctx context.Context) error { return runRecorder(ctx, cfg, b, log, reg, pg) })
	}

	var gw *gateway.Gateway
	var srv *http.Server
	if runGateway {
		admitter, settle := chooseAdmitter(cfg, lh)
		registerFollowUps(reg, admitter)
		gopts := gateway.Options{
			Config: cfg, JetStream: b.js, OutboxDir: cfg.DataPath("outbox"),
			Admitter: admitter, SettleLocally: settle,
			Registerer: reg, Gatherer: reg, Logger: log, Ready: readyFn,
		}
		if lh != nil && lh.rdb != nil {
			gopts.Redis, gopts.RedisPrefix = lh.rdb, redisPrefix(cfg)
		}
		gw, err = gateway.New(gopts)
		if err != nil {
			return err
		}
		gw.Start(workers)
		srv = &http.Server{
			Addr:              cfg.Listen,
			Handler:           gw.Handler(),
			BaseContext:       gw.BaseContext,
			ConnContext:       gw.ConnContext,
			ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
			IdleTimeout:       cfg.Server.IdleTimeout.D(),
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			_ = gw.Close(context.Background())
			return fmt.Errorf("listen %s: %w", cfg.Listen, err)
		}
		log.Info("gateway listening", "addr", ln.Addr().String())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("gateway: %w", err)
			}
		}()
	}

	var rdb redis.UniversalClient
	if lh != nil {
		rdb = lh.rdb
	}
	periods := newLivePeriods(cfg, rdb)
	// authStorage is the auth.storage in force, which a reload may change:
	// the admin key API serves only while it is redis.
	var authStorage atomic.Pointer[string]
	authStorage.Store(&cfg.Auth.Storage)
	var admin *http.Server
	if cfg.Admin.Listen != "" {
		adminReady := readyFn
		if gw != nil {
			// The admin listener's /readyz says what the gateway's does:
			// backends, events, NATS and Redis.
			adminReady = func(ctx context.Context) error {
				p := &readyProgress{}
				for _, err := range []error{gw.BackendsReady(), gw.EventsReady(), readyFn(ctx)} {
					if err != nil {
						p.fail(err)
					}
				}
				return p.err("")
			}
		}
		admin, err = startAdmin(cfg, target, reg, lh, periods, func() string { return *authStorage.Load() }, adminReady, log, errc)
		if err != nil {
			return err
		}
	}

wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			break wait
		case err = <-errc:
			log.Error("shutting down after a failure", "err", err)
			break wait
		case <-hup:
			if next := reload(workers, cfgPath, adminListen, cfg, gw, log); next != nil {
				periods.set(next)
				authStorage.Store(&next.Auth.Storage)
			}
		}
	}
	stopping.Store(true)
	drain := cfg.Server.DrainTimeout.D()
	if drain <= 0 {
		drain = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if srv != nil {
		if serr := srv.Shutdown(sctx); serr != nil {
			// Past the deadline: end the requests still open (a
			// stream with an error event in its client's dialect, one
			// with no reply yet with a 503; each billed for what was
			// delivered), give them a moment to say so, then close
			// the connections; their events are published below.
			log.Warn("drain deadline passed with requests still open; closing them", "err", serr)
			gw.CutOpenRequests(time.Second)
			_ = srv.Close()
		}
	}
	if gw != nil {
		// The drain deadline may be spent: the requests just cut get a
		// moment to finish, and the outbox its own time to publish.
		fctx, fcancel := context.WithTimeout(context.Background(), flushTimeout)
		if cerr := gw.Close(fctx); cerr != nil {
			log.Error("events not flushed", "err", cerr)
		}
		fcancel()
	}
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	stopWorkers()
	wg.Wait()
	log.Info("stopped")
	return err
}

// flushTimeout bounds how long a stopping gateway waits, after the drain,
// for the requests it cut to finish and for its outbox to be published.
// Events it could not publish stay in the outbox for the next start.
const flushTimeout = 10 * time.Second

func startAdmin(cfg *config.Config, target string, reg *prometheus.Registry, lh *ledgerHandle, periods *livePeriods, authStorage func() string, ready func(context.Context) error, log *slog.Logger, errc chan<- error) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	var store ledger.Store
	if lh != nil {
		store = lh.store
	}
	opts := gateway.AdminOptions{Token: cfg.Admin.Token, Ledger: store, Periods: periods.current}
	if target == "notifier" || target == "recorder" {
		opts.NotServed = "--target " + target + " serves no admin API: ask the admin listener of a gateway or a meter (or run llmproxy usage / llmproxy keys)"
	}
	mux.Handle("/admin/", gateway.AdminHandler(opts))
	mux.Handle("/debug/pprof/", gateway.ProfileHandler(cfg.Admin.Token))
	if lh != nil && lh.rdb != nil {
		keysAPI := gateway.AdminKeysHandler(lh.rdb, redisPrefix(cfg), cfg.Admin.Token, authStorage, log)
		mux.Handle("/admin/keys", keysAPI)
		mux.Handle("/admin/keys/", keysAPI)
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", cfg.Admin.Listen, err)
	}
	log.Info("admin listening", "addr", ln.Addr().String())
	// An idle keep-alive connection is closed as the API listener's are:
	// for a worker this is the only listener, and anyone who can reach
	// it could otherwise hold its descriptors for good.
	srv := &http.Server{Handler: gateway.AdminRoutes(mux), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: cfg.Server.IdleTimeout.D()}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin: %w", err)
		}
	}()
	return srv, nil
}

// registerFollowUps puts a Redis admitter's follow-ups (see
// ledger.FollowUps) on /metrics: calls waiting to be sent again while Redis
// does not answer, and those dropped past the bound.
func registerFollowUps(reg prometheus.Registerer, a ledger.Admitter) {
	ra, ok := a.(*ledger.RedisAdmitter)
	if !ok {
		return
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llmproxy_admission_followups_waiting",
			Help: "Cancellations of failed admissions and failed lease releases waiting to be sent to Redis again, and with redis.wait_replicas lease releases waiting for the replicas to confirm them.",
		}, func() float64 { return float64(ra.FollowUps().Waiting) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "llmproxy_admission_followups_dropped_total",
			Help: "Follow-ups not queued because too many were waiting; what they held in Redis is freed by its TTL.",
		}, func() float64 { return float64(ra.FollowUps().Dropped) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "llmproxy_admission_followups_unconfirmed_total",
			Help: "With redis.wait_replicas, lease releases done on the master but not queued to be confirmed by the replicas because too many were waiting.",
		}, func() float64 { return float64(ra.FollowUps().Unconfirmed) }),
	)
}

// localMeterAckWait is the meter's ack wait on the local ledger. That
// ledger is this process's own, so its meter is the only one: events it had
// taken when it was killed come back after this wait instead of the default
// 30 s, which leaves time for other meters' batches on a slow Redis. Its
// batches take milliseconds (an fsync each); an event redelivered while its
// batch is still being written is skipped by request id.
const localMeterAckWait = 5 * time.Second

func endpointsOf(cfg *config.Config) ([]notifier.Endpoint, error) {
	var out []notifier.Endpoint
	for _, w := range cfg.Endpoints() {
		e := notifier.Endpoint{
			Name: w.Name, URL: w.URL, Secret: w.Secret,
			Timeout: w.Timeout.D(), MaxAttempts: w.MaxAttempts, MaxAge: w.MaxAge.D(),
			BackoffMax: w.BackoffMax.D(), LegacyName: w.LegacyName,
			Unauthenticated: w.Unauthenticated,
		}
		if w.TLS.IsSet() {
			c, err := w.TLS.Load()
			if err != nil {
				return nil, fmt.Errorf("webhook %s: tls: %w", w.Name, err)
			}
			e.TLSConfig = c
		}
		out = append(out, e)
	}
	return out, nil
}
