package balancer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Health check defaults applied to zero values.
const (
	DefaultHealthTimeout      = 2 * time.Second
	DefaultHealthyThreshold   = 1
	DefaultUnhealthyThreshold = 2
	// maxScrapeBytes bounds a /metrics body; engines expose a few KiB.
	maxScrapeBytes = 1 << 20
)

// HealthChecker actively checks the pool's upstreams (GET base URL + the
// upstream's own health path, else the configured one; 2xx is a pass; an
// upstream with neither is not checked) and, when the pool balances by
// least_load, scrapes each engine's /metrics on the same loop. An
// upstream turns unhealthy after UnhealthyThreshold failed checks in a row
// and healthy again after HealthyThreshold passes; its very first check
// decides at once. Checks of different upstreams run in parallel, each
// under Timeout.
type HealthChecker struct {
	pool       *Pool
	client     *http.Client
	path       string // health_check.path, for upstreams without their own
	checks     bool   // active checks are on (enabled is not false)
	scrape     bool
	interval   time.Duration
	timeout    time.Duration
	healthyN   int
	unhealthyN int
	log        *slog.Logger
}

// NewHealthChecker returns a checker for pool configured by cfg
// (health_check). Checks are disabled when enabled is false, and for an
// upstream when neither it nor cfg has a path. client nil means a client
// on http.DefaultTransport that follows redirects only within the
// upstream's own scheme and host (sameOrigin); its Transport should not
// share the proxy's connection pool limits.
func NewHealthChecker(pool *Pool, cfg config.HealthCheck, client *http.Client) *HealthChecker {
	if client == nil {
		client = &http.Client{CheckRedirect: sameOrigin}
	}
	h := &HealthChecker{
		pool:       pool,
		client:     client,
		path:       cfg.Path,
		checks:     cfg.Enabled == nil || *cfg.Enabled,
		scrape:     pool.Strategy() == LeastLoad,
		interval:   cfg.Interval.D(),
		timeout:    cfg.Timeout.D(),
		healthyN:   cfg.HealthyThreshold,
		unhealthyN: cfg.UnhealthyThreshold,
		log:        slog.Default().With("component", "balancer"),
	}
	h.path = absPath(h.path)
	if h.checks {
		h.checks = false
		for _, u := range pool.Upstreams() {
			h.checks = h.checks || h.pathOf(u) != ""
		}
	}
	if h.interval <= 0 {
		h.interval = DefaultHealthInterval
	}
	if h.timeout <= 0 {
		h.timeout = DefaultHealthTimeout
	}
	if h.healthyN <= 0 {
		h.healthyN = DefaultHealthyThreshold
	}
	if h.unhealthyN <= 0 {
		h.unhealthyN = DefaultUnhealthyThreshold
	}
	return h
}

// SetLogger sends the checker's lines (backend health changes) to log,
// with component=balancer; the default is slog.Default(). Call it before
// Start.
func (h *HealthChecker) SetLogger(log *slog.Logger) {
	if log != nil {
		h.log = log.With("component", "balancer")
	}
}

// Enabled reports whether the checker has anything to do: active checks,
// load scraping, or both.
func (h *HealthChecker) Enabled() bool { return h.checks || h.scrape }

// Start runs one round synchronously, so the gateway serves only after a
// first verdict, then checks each upstream again interval after its last
// check ended, in a goroutine per upstream, until ctx is done. It does nothing when the checker is disabled.
func (h *HealthChecker) Start(ctx context.Context) {
	// An upstream kept from the pool before a reload keeps its health
	// verdict. One this checker does not check (the reload dropped
	// health_check.path, or turned checks off) has no verdict any more:
	// kept "down", no check would ever lift it and it would never be
	// tried again.
	for _, u := range h.pool.Upstreams() {
		if h.checks && h.pathOf(u) != "" {
			continue
		}
		if u.forgetChecks() {
			h.log.Info("backend health changed", "backend", u.Name, "healthy", true, "reason", "no longer actively checked")
		}
	}
	if !h.Enabled() {
		return
	}
	h.RunOnce(ctx)
	// Each upstream on its own loop, the next check interval after the
	// last one ended: a check that hangs until its timeout neither holds
	// up the others' nor, once it ends, is followed at once by the next
	// (a ticker's tick kept while it hung), which would let a backend
	// that has just come back pass healthy_threshold checks in a row
	// within moments.
	for _, u := range h.pool.Upstreams() {
		go func() {
			t := time.NewTimer(h.interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					h.runOne(ctx, u)
					t.Reset(h.interval)
				}
			}
		}()
	}
}

// RunOnce checks (and scrapes) every upstream once, in parallel, and
// returns when all are done.
func (h *HealthChecker) RunOnce(ctx context.Context) {
	var wg sync.WaitGroup
	for _, u := range h.pool.Upstreams() {
		wg.Go(func() { h.runOne(ctx, u) })
	}
	wg.Wait()
}

// runOne checks and scrapes u, as configured.
func (h *HealthChecker) runOne(ctx context.Context, u *Upstream) {
	if h.checks && h.pathOf(u) != "" {
		h.check(ctx, u)
	}
	if h.scrape {
		h.scrapeLoad(ctx, u)
	}
}

func (h *HealthChecker) check(ctx context.Context, u *Upstream) {
	if ctx.Err() != nil {
		return
	}
	why := h.fetch(ctx, u, h.pathOf(u), nil)
	ok := why == ""
	if ctx.Err() != nil {
		// Stopped (a reload replaced this checker): the check was cut
		// short, and the verdict is no longer this checker's to give.
		return
	}
	was := u.Healthy()
	u.recordCheck(ok, h.healthyN, h.unhealthyN)
	if now := u.Healthy(); now != was {
		if now {
			h.log.Info("backend health changed", "backend", u.Name, "healthy", now)
		} else {
			h.log.Warn("backend health changed", "backend", u.Name, "healthy", now, "reason", why)
		}
	}
}

// pathOf returns the path u is checked at: its own, else the configured
// one; empty when it has neither.
func (h *HealthChecker) pathOf(u *Upstream) string {
	if u.HealthPath != "" {
		return absPath(u.HealthPath)
	}
	return h.path
}

// absPath puts a leading slash on a path that lacks one.
func absPath(p string) string {
	if p != "" && !strings.HasPrefix(p, "/") {
		return "/" + p
	}
	return p
}

func (h *HealthChecker) scrapeLoad(ctx context.Context, u *Upstream) {
	if ctx.Err() != nil {
		return
	}
	var body []byte
	if !h.get(ctx, u, "/metrics", &body) {
		return
	}
	l, found := ParseLoad(body)
	if !found {
		return
	}
	l.At = h.pool.clock.Now()
	l.InFlightAtScrape = u.InFlight()
	u.SetLoad(l)
}

// sameOrigin is the health checker's redirect policy: a redirect is
// followed on the upstream's own scheme and host only. net/http leaves out
// Authorization on a redirect to another host, but not the other headers
// a backend's credentials may be in (api-key, x-api-key, ...), and would
// send them in the clear on a redirect from https to http; a reply
// from elsewhere does not say the upstream is healthy either. The 3xx
// itself is then the answer: a failed check.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.URL.Scheme != via[0].URL.Scheme || req.URL.Host != via[0].URL.Host {
		return http.ErrUseLastResponse
	}
	return nil
}

// get requests base URL + path with the backend's headers and reports a
// 2xx; with body non-nil it also reads the body (bounded).
func (h *HealthChecker) get(ctx context.Context, u *Upstream, path string, body *[]byte) bool {
	return h.fetch(ctx, u, path, body) == ""
}

// fetch is get saying why it failed: "" when it did not.
func (h *HealthChecker) fetch(ctx context.Context, u *Upstream, path string, body *[]byte) string {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	target := strings.TrimRight(u.URL.String(), "/") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err.Error()
	}
	u.SetHeaders(req)
	client := h.client
	if u.healthClient != nil {
		client = u.healthClient
	}
	resp, err := client.Do(req)
	if err != nil {
		// Without the URL net/http's error quotes (the backend's name
		// says which).
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return "status " + strconv.Itoa(resp.StatusCode) + " from " + path
	}
	if body != nil {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxScrapeBytes))
		if err != nil {
			return err.Error()
		}
		*body = b
		return ""
	}
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	return ""
}
