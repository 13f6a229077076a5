// Package gateway is LLMProxy's HTTP front: it authenticates a request,
// admits it, picks a backend, relays the response without buffering a
// stream, reads the token usage off the passing bytes and hands a
// RequestCompleted event to the publisher.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/balancer"
	"github.com/llmproxy/llmproxy/services/gateway/internal/inflight"
	"github.com/llmproxy/llmproxy/services/gateway/internal/publish"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
)

// EventSink receives one event per finished request. Publish must not block
// the request for long: it is called on the request's goroutine.
type EventSink interface {
	Publish(ev *events.RequestCompleted)
}

// OutboxDurableDelay is how long the gateway's outbox keeps an event after
// JetStream acknowledged it; the NATS server must fsync its store at least
// this often (with a margin), or a power loss can lose acknowledged events
// the outbox no longer holds. The single binary's embedded server syncs
// every OutboxDurableDelay/2.
const OutboxDurableDelay = publish.DurableDelay

// Options wires a Gateway.
type Options struct {
	Config *config.Config
	// JetStream and OutboxDir make the gateway publish its events through
	// its own durable outbox; Events overrides them (tests).
	JetStream jetstream.JetStream
	OutboxDir string
	Events    EventSink
	// Keys overrides the key store built from the config (e.g. Redis).
	Keys auth.Store
	// Admitter decides rate limits, concurrency and quotas; nil admits
	// everything.
	Admitter ledger.Admitter
	// SettleLocally makes the gateway settle each request's reservation
	// with the Admitter itself (rate_limit.storage: memory, whose admitter
	// the meter cannot reach).
	SettleLocally bool
	// Redis is the shared Redis, for auth.storage: redis.
	Redis       redis.UniversalClient
	RedisPrefix string
	Registerer  prometheus.Registerer
	Gatherer    prometheus.Gatherer
	Logger      *slog.Logger
	// Ready reports whether the gateway's dependencies (NATS, Redis) are
	// reachable; nil means always.
	Ready func(ctx context.Context) error
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Gateway serves the client-facing API. It is safe for concurrent use and
// must not be copied.
type Gateway struct {
	rt           atomic.Pointer[runtime]
	keysOverride auth.Store
	admitter     ledger.Admitter
	settler      settler
	redis        redis.UniversalClient
	redisPrefix  string
	// keyPing overrides keyChangesPing (tests).
	keyPing   time.Duration
	collector *poolCollector
	events    EventSink
	metrics   *metrics
	log       *slog.Logger
	ready     func(ctx context.Context) error
	now       func() time.Time
	gatherer  prometheus.Gatherer
	echo      *echo.Echo
	reqIDs    requestIDs
	inflight  atomic.Int64
	// failures rate-limits the log lines of requests failed by a
	// dependency that is down.
	failures failureLog
	// publisher is the gateway's own event publisher, closed by Close.
	publisher *publish.Publisher
	// journal records the streams under way, for a crash (nil without
	// an outbox).
	journal *inflight.Journal
	// eventStall is how long the publisher may fail before /readyz says
	// so (eventStallLimit).
	eventStall time.Duration
	// cutting is set by CutOpenRequests: the requests that end from now
	// on for want of their connection were cut by the server.
	cutting atomic.Bool
	// stop is the base context of the requests the gateway serves (see
	// BaseContext); CutOpenRequests cancels it with errServerShutdown.
	stop       context.Context
	stopCancel context.CancelCauseFunc
	// lists keeps each backend's last model lists (models.go).
	lists listCache
	// refusals bounds the events of refusals.
	refusals refusalBudget
}

// errServerShutdown is the cause of a request's context cancelled by
// CutOpenRequests.
var errServerShutdown = errors.New("server shutdown: drain deadline passed")

// BaseContext is the base context of every request the gateway serves: an
// http.Server's BaseContext. CutOpenRequests cancels it.
func (g *Gateway) BaseContext(net.Listener) context.Context { return g.stop }

// ConnContext is the gateway's http.Server ConnContext: it keeps each
// client connection in its requests' contexts, so that server.send_timeout
// can tell a client that reads slowly (its connection still taking bytes)
// from one that stopped. Without it a write that waits send_timeout for a
// large send buffer to drain is cut, however the client reads.
func (g *Gateway) ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, clientConnKey{}, c)
}

// clientConnKey keys the client's connection in a request's context.
type clientConnKey struct{}

// clientConn returns the client connection of r (ConnContext) when r is
// its only request in flight (HTTP/1), else nil. On HTTP/2 a connection's
// acknowledged bytes are every stream's, and one stream's writes wait on
// its own flow control, not on the send buffer: a stream its client
// stopped reading must be cut though another one is read.
func clientConn(r *http.Request) net.Conn {
	if r.ProtoMajor != 1 {
		return nil
	}
	c, _ := r.Context().Value(clientConnKey{}).(net.Conn)
	return c
}

// CutOpenRequests ends the requests still running when the drain deadline
// of a shutdown has passed, before the server closes their connections:
// their contexts are cancelled (when the server's BaseContext is the
// gateway's), a stream is ended with an error event in its client's
// dialect and a request with no reply head yet gets a 503 server_shutdown,
// and they are recorded as cut by the server (error server_shutdown), not
// as left by their clients. What they delivered is billed as for a client
// that left. It waits up to wait for them to end.
func (g *Gateway) CutOpenRequests(wait time.Duration) {
	g.cutting.Store(true)
	g.stopCancel(errServerShutdown)
	deadline := time.Now().Add(wait)
	for g.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// cutByServer reports whether ctx, a request's, was cancelled by
// CutOpenRequests.
func cutByServer(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errServerShutdown)
}

// New builds a Gateway from opts.
func New(opts Options) (*Gateway, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("gateway: config is required")
	}
	g := &Gateway{
		events:       opts.Events,
		keysOverride: opts.Keys,
		admitter:     opts.Admitter,
		redis:        opts.Redis,
		redisPrefix:  opts.RedisPrefix,
		collector:    &poolCollector{},
		log:          opts.Logger,
		ready:        opts.Ready,
		now:          opts.Now,
		gatherer:     opts.Gatherer,
		reqIDs:       newRequestIDs(),
	}
	g.stop, g.stopCancel = context.WithCancelCause(context.Background())
	if g.log == nil {
		g.log = slog.Default()
	}
	if g.now == nil {
		g.now = time.Now
	}
	if opts.SettleLocally {
		st, ok := opts.Admitter.(settler)
		if !ok {
			return nil, errors.New("gateway: SettleLocally needs an admitter that settles (ledger.MemoryAdmitter)")
		}
		g.settler = st
	}
	rt, err := g.buildRuntime(cfg, opts.Keys)
	if err != nil {
		return nil, err
	}
	g.rt.Store(rt)
	_ = g.collector.swap(rt.pool)
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	g.metrics = newMetrics(reg, g.inflight.Load)
	if err := reg.Register(g.collector); err != nil {
		return nil, fmt.Errorf("register backend metrics: %w", err)
	}
	g.eventStall = eventStallLimit
	if g.events == nil && opts.JetStream != nil {
		p, err := publish.New(opts.JetStream, opts.OutboxDir, publish.Options{Logger: g.log, Registerer: reg})
		if err != nil {
			return nil, fmt.Errorf("event outbox: %w", err)
		}
		g.publisher = p
		g.events = p
		if err := g.openJournal(opts.OutboxDir); err != nil {
			_ = p.Close(context.Background())
			return nil, err
		}
	}
	if g.events == nil {
		g.events = discardEvents{}
	}
	if g.gatherer == nil {
		if gr, ok := reg.(prometheus.Gatherer); ok {
			g.gatherer = gr
		}
	}
	g.echo = g.routes()
	return g, nil
}

// Start runs the first round of health checks and starts the background
// checkers and, with Redis, the listener for key changes (watchKeyChanges);
// it returns when the first verdict is in.
func (g *Gateway) Start(ctx context.Context) {
	g.rt.Load().start(ctx)
	if g.redis != nil {
		go g.watchKeyChanges(ctx)
	}
}

// Close waits for the requests still running to finish and put their
// events in the outbox (until ctx is done), then flushes the events still
// waiting to be published (to NATS, or to the on-disk outbox) and stops
// background work. Call it once the HTTP server has shut down: drained, or
// closed with its connections when the drain deadline passed.
func (g *Gateway) Close(ctx context.Context) error {
	// A request still running has yet to put its event in the outbox:
	// wait for it (its server has been shut down, so no new one starts),
	// or for ctx.
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for g.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			g.log.Error("requests still running when the gateway closed; their events are not published", "requests", g.inflight.Load())
			return g.closePublisher(ctx)
		case <-t.C:
		}
	}
	return g.closePublisher(ctx)
}

func (g *Gateway) closePublisher(ctx context.Context) error {
	if g.journal != nil {
		if err := g.journal.Shut(); err != nil {
			g.log.Error("in-flight journal: close failed", "err", err)
		}
	}
	if g.publisher != nil {
		return g.publisher.Close(ctx)
	}
	return nil
}

// Handler returns the client-facing HTTP handler.
func (g *Gateway) Handler() http.Handler { return g.echo }

func (g *Gateway) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		shape := shapeOf(c.Request().URL.Path)
		var he *echo.HTTPError
		if errors.As(err, &he) {
			switch he.Code {
			// The path is quoted as the client wrote it, as the router
			// matched it: /v1/chat%2Fcompletions is not
			// /v1/chat/completions; and as the access line quotes it,
			// bounded and without a key (replies end up in client
			// logs and the proxies between).
			case http.StatusNotFound:
				id := g.unroutedID(c.Response())
				apierr.WriteShaped(c.Response(), apierr.NotFound("unknown_url", "unknown path "+g.unroutedPath(c.Request())), shape)
				g.logUnrouted(c.Request(), id, http.StatusNotFound, "unknown_url")
				return
			case http.StatusMethodNotAllowed:
				id := g.unroutedID(c.Response())
				apierr.WriteShaped(c.Response(), &apierr.Error{Status: 405, Type: "invalid_request_error", Code: "method_not_allowed", Message: "method " + unroutedMethod(c.Request()) + " is not allowed on " + g.unroutedPath(c.Request())}, shape)
				g.logUnrouted(c.Request(), id, http.StatusMethodNotAllowed, "method_not_allowed")
				return
			}
		}
		apierr.WriteShaped(c.Response(), apierr.Internal("internal_error", "internal error"), shape)
	}
	// Every GET endpoint answers HEAD as GET (net/http sends no body), as
	// the admin listener's do: load balancers and uptime checkers probe
	// with HEAD, and curl -I asks for the model lists' heads.
	get := func(path string, h echo.HandlerFunc) {
		e.GET(path, h)
		e.HEAD(path, headAsGET(h))
	}
	proxy := echo.WrapHandler(http.HandlerFunc(g.serveProxy))
	for _, p := range proxiedPOST {
		e.POST(p, proxy)
	}
	get("/v1/models", echo.WrapHandler(http.HandlerFunc(g.serveModels)))
	get("/api/tags", echo.WrapHandler(http.HandlerFunc(g.serveOllamaList)))
	get("/api/ps", echo.WrapHandler(http.HandlerFunc(g.serveOllamaList)))
	get("/api/version", echo.WrapHandler(http.HandlerFunc(g.serveOllamaVersion)))
	get("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	get("/readyz", g.readyz)
	if g.gatherer != nil {
		metrics := echo.WrapHandler(promhttp.HandlerFor(g.gatherer, promhttp.HandlerOpts{}))
		get("/metrics", func(c echo.Context) error {
			if !g.rt.Load().cfg.Server.PublicStatusOn() {
				return echo.ErrNotFound
			}
			return metrics(c)
		})
	}
	return e
}

// maxLoggedPath bounds the path an access line quotes for a request no
// route matched: the client writes it, and a line per request must stay a
// line.
const maxLoggedPath = 256

// unroutedID gives a request no route took an id of the gateway's own (a
// client's X-Request-Id is not looked at: it might hold the key, which is
// not read for such a request) and names it in the reply, as the access line
// does.
func (g *Gateway) unroutedID(w http.ResponseWriter) string {
	id := g.reqIDs.next()
	w.Header().Set("X-Request-Id", id)
	return id
}

// logUnrouted writes the access line of a request no route took (an
// unknown path, a known one with the wrong method), so that a client whose
// base URL is wrong (a missing /v1, say) shows in the log. It has no key,
// backend or event: nothing of it was authenticated, and its path is no
// metric label (every client-chosen path would be a new series).
func (g *Gateway) logUnrouted(r *http.Request, id string, status int, code string) {
	if !g.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	g.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("request_id", id), slog.String("key_id", ""),
		slog.String("model", ""), slog.String("path", g.unroutedPath(r)), slog.String("method", unroutedMethod(r)),
		slog.Int("status", status), slog.Int64("latency_ms", 0), slog.Int64("ttft_ms", 0),
		slog.Int64("prompt_tokens", 0), slog.Int64("completion_tokens", 0),
		slog.String("usage_source", ""), slog.String("backend", ""), slog.String("error", code))
}

// unroutedPath is the path of a request no route took, fit for the log:
// the key the request presents, should a client have put it in the path
// too, any key made by `llmproxy keys` (one a client sent without a
// header), and what logging.redact's rules match are replaced, and what is
// left is bounded.
func (g *Gateway) unroutedPath(r *http.Request) string {
	return clip(g.rt.Load().redact.Text(pathWithoutSecrets(r)), maxLoggedPath)
}

// pathWithoutSecrets is r's path as the client wrote it, with the key the
// request presents and any key made by `llmproxy keys` replaced (decoded
// where one was percent-encoded).
func pathWithoutSecrets(r *http.Request) string {
	p, key := r.URL.EscapedPath(), bearer(r)
	if d := r.URL.Path; d != p && (holdsKey(d, key) || strings.Contains(d, keys.SecretPrefix)) {
		p = d // a key percent-encoded: quoted decoded, without it
	}
	return withoutSecrets(p, key)
}

// unroutedMethod is r's method as a reply or the log quotes it: bounded,
// without a key.
func unroutedMethod(r *http.Request) string {
	return boundMethod(withoutSecrets(r.Method, bearer(r)))
}

// withoutSecrets returns s, something a client sent that the log quotes,
// with the key the request presents and any key made by `llmproxy keys`
// replaced; a made key's prefix followed by what could be the start of
// one (a method cut at its bound) is replaced with what follows.
func withoutSecrets(s, key string) string {
	s = withoutKey(s, key)
	if strings.Contains(s, keys.SecretPrefix) {
		s = madeSecret.ReplaceAllLiteralString(s, redact.Placeholder)
	}
	return s
}

// madeSecret matches a key made by `llmproxy keys`, or what starts one,
// and a key of the file an operator gave the same prefix (dashes and
// underscores included: sk-llmproxy-team-a-2026).
var madeSecret = regexp.MustCompile(regexp.QuoteMeta(keys.SecretPrefix) + "[0-9A-Za-z_-]+")

// maxLoggedMethod bounds the method an access line or an error quotes: Go
// takes request lines up to its header limit, 1 MiB.
const maxLoggedMethod = 32

func boundMethod(m string) string { return clip(m, maxLoggedMethod) }

// clip returns s, or its first n bytes and "…" when it is longer.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// headAsGET serves a HEAD request with h as the GET it stands for: h, the
// hooks and a backend see a GET, so the answer's status and headers are
// the GET's (a backend need not know HEAD, and a model list the gateway
// filters needs the list). net/http, which knows the request was a HEAD,
// drops the body h writes. A proxied HEAD therefore costs what its GET
// does, and is authenticated, admitted and recorded as one.
func headAsGET(h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request().WithContext(c.Request().Context()) // a shallow copy
		r.Method = http.MethodGet
		c.SetRequest(r)
		return h(c)
	}
}

// The client-facing endpoints passed through to backends.
var (
	proxiedPOST = []string{
		"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
		"/api/chat", "/api/generate", "/api/embed", "/api/show", "/generate", "/generate_stream",
	}
)

// BackendsReady reports an error when no backend is available, the
// backends' half of the gateway's /readyz, for a readiness check served
// elsewhere (the admin listener).
func (g *Gateway) BackendsReady() error {
	if g.rt.Load().pool.AnyHealthy() {
		return nil
	}
	return errors.New("no backend is available")
}

// servable reports whether a backend in state is still sent requests: a
// healthy one, or one only ejected by passive checks, which is tried when
// nothing else is left. A backend active checks mark down is not.
func servable(state string) bool {
	return state == balancer.StateHealthy || state == balancer.StateEjected
}

// eventStallLimit is how long the gateway's events may go unpublished,
// every publish failing, before its /readyz says so.
const eventStallLimit = 30 * time.Second

// EventsReady reports an error when the gateway's events have gone
// unpublished for eventStallLimit or more, every publish failing (a NATS
// that answers but cannot store them: its store write failed, say): the
// events' half of the gateway's /readyz, for a readiness check served
// elsewhere (the admin listener). The events wait in the outbox meanwhile.
func (g *Gateway) EventsReady() error {
	if g.publisher == nil {
		return nil
	}
	if err := g.publisher.OutboxError(); err != nil {
		return fmt.Errorf("the event outbox cannot write (%v); events are held in memory only", err)
	}
	if d, msg := g.publisher.Stalled(); d >= g.eventStall {
		return fmt.Errorf("events have not been published for %s (%s); they wait in the outbox", d.Round(time.Second), msg)
	}
	return nil
}

func (g *Gateway) readyz(c echo.Context) error {
	type backendState struct {
		Name  string `json:"name"`
		URL   string `json:"url"`
		State string `json:"state"`
	}
	resp := struct {
		Ready    bool           `json:"ready"`
		Error    string         `json:"error,omitempty"`
		Backends []backendState `json:"backends"`
	}{Ready: true}
	anyUp := false
	for _, s := range g.rt.Load().pool.Snapshot() {
		resp.Backends = append(resp.Backends, backendState{Name: s.Name, URL: s.URL, State: s.State})
		if servable(s.State) {
			anyUp = true
		}
	}
	// Everything that is not ready is named, not only the first.
	var failed []string
	if !anyUp {
		failed = append(failed, "no backend is available")
	}
	if err := g.EventsReady(); err != nil {
		failed = append(failed, err.Error())
	}
	if g.ready != nil {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		if err := g.ready(ctx); err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		resp.Ready, resp.Error = false, strings.Join(failed, "; ")
	}
	status := http.StatusOK
	if !resp.Ready {
		status = http.StatusServiceUnavailable
	}
	if !g.rt.Load().cfg.Server.PublicStatusOn() {
		// Clients reach this listener: the details are the admin
		// listener's.
		return c.JSON(status, struct {
			Ready bool `json:"ready"`
		}{resp.Ready})
	}
	return c.JSON(status, resp)
}

// settler settles a request's reservation with its real token count.
type settler interface {
	Settle(keyID, requestID string, tokens int64, at time.Time) bool
}

type discardEvents struct{}

func (discardEvents) Publish(*events.RequestCompleted) {}

// responseController is http.NewResponseController for the writer echo's
// Response wraps: echo's Flush swallows the connection's error, which the
// relay needs to see (a client gone, a write deadline passed).
func responseController(w http.ResponseWriter) *http.ResponseController {
	if r, ok := w.(*echo.Response); ok {
		w = r.Writer
	}
	return http.NewResponseController(w)
}
