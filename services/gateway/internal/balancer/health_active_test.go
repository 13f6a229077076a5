package balancer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// flipServer answers its health path with the current status and its
// /metrics with the current body.
type flipServer struct {
	*httptest.Server
	status  atomic.Int32
	metrics atomic.Pointer[string]
	hits    atomic.Int32
	auth    atomic.Pointer[string]
}

func newFlipServer(t *testing.T) *flipServer {
	s := &flipServer{}
	s.status.Store(http.StatusOK)
	empty := ""
	s.metrics.Store(&empty)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := r.Header.Get("Authorization")
		s.auth.Store(&a)
		switch r.URL.Path {
		case "/health":
			s.hits.Add(1)
			w.WriteHeader(int(s.status.Load()))
		case "/metrics":
			fmt.Fprint(w, *s.metrics.Load())
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func TestHealthCheckerThresholds(t *testing.T) {
	a, b := newFlipServer(t), newFlipServer(t)
	b.status.Store(http.StatusServiceUnavailable)
	p := mustPool(t, PoolConfig{Backends: []config.Backend{
		{URL: a.URL, Name: "a", Headers: map[string]string{"Authorization": "Bearer k"}},
		{URL: b.URL, Name: "b"},
	}})
	h := NewHealthChecker(p, config.HealthCheck{
		Path:               "health",
		HealthyThreshold:   2,
		UnhealthyThreshold: 3,
	}, a.Client())
	ctx := context.Background()
	ua, ub := p.ByName("a"), p.ByName("b")

	// The first round decides at once.
	h.RunOnce(ctx)
	if ua.State() != StateHealthy || ub.State() != StateUnhealthy {
		t.Fatalf("after first round: a=%s b=%s", ua.State(), ub.State())
	}
	if got := *a.auth.Load(); got != "Bearer k" {
		t.Errorf("backend headers not sent: %q", got)
	}

	// a fails twice: still healthy (threshold 3); the third failure flips.
	a.status.Store(http.StatusServiceUnavailable)
	h.RunOnce(ctx)
	h.RunOnce(ctx)
	if ua.State() != StateHealthy {
		t.Fatalf("a unhealthy after 2 failures, threshold 3")
	}
	h.RunOnce(ctx)
	if ua.State() != StateUnhealthy {
		t.Fatalf("a = %s after 3 failures", ua.State())
	}
	if _, err := p.Pick("", nil); err != ErrNoAvailable {
		t.Fatalf("Pick with all down: %v", err)
	}

	// b recovers: one pass is not enough (threshold 2), two are.
	b.status.Store(http.StatusOK)
	h.RunOnce(ctx)
	if ub.State() != StateUnhealthy {
		t.Fatalf("b healthy after 1 pass, threshold 2")
	}
	a.status.Store(http.StatusOK)
	h.RunOnce(ctx)
	if ub.State() != StateHealthy {
		t.Fatalf("b = %s after 2 passes", ub.State())
	}
	// A pass interrupted by a failure starts over.
	if ua.State() != StateUnhealthy {
		t.Fatalf("a healthy after 1 pass")
	}
	a.status.Store(http.StatusInternalServerError)
	h.RunOnce(ctx)
	a.status.Store(http.StatusOK)
	h.RunOnce(ctx)
	if ua.State() != StateUnhealthy {
		t.Fatalf("a healthy after fail, pass")
	}
	h.RunOnce(ctx)
	if ua.State() != StateHealthy {
		t.Fatalf("a = %s after 2 passes", ua.State())
	}
}

func TestHealthCheckerTimeoutAndDeadBackend(t *testing.T) {
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(block)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	p := mustPool(t, PoolConfig{Backends: []config.Backend{{URL: slow.URL, Name: "slow"}, {URL: deadURL, Name: "dead"}}})
	h := NewHealthChecker(p, config.HealthCheck{Path: "/health", Timeout: config.Duration(50 * time.Millisecond)}, nil)
	h.RunOnce(context.Background())
	for _, n := range []string{"slow", "dead"} {
		if s := p.ByName(n).State(); s != StateUnhealthy {
			t.Errorf("%s = %s, want unhealthy", n, s)
		}
	}
}

// TestHealthCheckerKeepsCredentialsHome: a check follows a redirect on the
// backend's own host, but not to another host, which would get the
// backend's credential headers (net/http drops only Authorization) and
// could not vouch for the backend anyway.
func TestHealthCheckerKeepsCredentialsHome(t *testing.T) {
	var elsewhere atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Store(r.Header.Clone())
	}))
	defer other.Close()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			http.Redirect(w, r, "/health/", http.StatusMovedPermanently)
		case "/health/":
			w.WriteHeader(http.StatusOK)
		default: // /away
			http.Redirect(w, r, other.URL+"/health", http.StatusFound)
		}
	}))
	defer backend.Close()
	creds := map[string]string{"Api-Key": "backend-secret"}
	p := mustPool(t, PoolConfig{Backends: []config.Backend{
		{URL: backend.URL, Name: "home", Headers: creds},
		{URL: backend.URL + "/x", Name: "away", Headers: creds, HealthCheckPath: "/away"},
	}})
	h := NewHealthChecker(p, config.HealthCheck{Path: "/health"}, nil)
	h.RunOnce(context.Background())
	if s := p.ByName("home").State(); s != StateHealthy {
		t.Errorf("home = %s, want healthy (a redirect on its own host)", s)
	}
	if s := p.ByName("away").State(); s != StateUnhealthy {
		t.Errorf("away = %s, want unhealthy (a redirect to another host)", s)
	}
	if hdr, _ := elsewhere.Load().(http.Header); hdr != nil {
		t.Errorf("another host was asked, with headers %v", hdr)
	}
}

func TestHealthCheckerStartRunsFirstRoundSynchronously(t *testing.T) {
	s := newFlipServer(t)
	s.status.Store(http.StatusServiceUnavailable)
	p := mustPool(t, PoolConfig{Backends: []config.Backend{{URL: s.URL, Name: "s"}}})
	h := NewHealthChecker(p, config.HealthCheck{Path: "/health", Interval: config.Duration(time.Hour)}, s.Client())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.Start(ctx)
	if got := p.ByName("s").State(); got != StateUnhealthy {
		t.Fatalf("state after Start = %s, want unhealthy", got)
	}
	if s.hits.Load() != 1 {
		t.Fatalf("hits = %d, want 1", s.hits.Load())
	}
}

// TestHealthCheckerBackendPath checks each backend at its own
// health_check_path when it has one, at health_check.path otherwise, and
// not at all when it has neither.
func TestHealthCheckerBackendPath(t *testing.T) {
	vllm := newFlipServer(t) // answers /health
	var versionHits atomic.Int32
	ollama := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/version" {
			http.NotFound(w, r) // like Ollama: no /health
			return
		}
		versionHits.Add(1)
		fmt.Fprint(w, `{"version":"0.5.0"}`)
	}))
	defer ollama.Close()
	backends := []config.Backend{
		{URL: vllm.URL, Name: "vllm"},
		{URL: ollama.URL, Name: "ollama", HealthCheckPath: "api/version"},
	}

	p := mustPool(t, PoolConfig{Backends: backends})
	NewHealthChecker(p, config.HealthCheck{Path: "/health"}, nil).RunOnce(context.Background())
	for _, n := range []string{"vllm", "ollama"} {
		if s := p.ByName(n).State(); s != StateHealthy {
			t.Errorf("%s = %s, want healthy", n, s)
		}
	}
	if vllm.hits.Load() != 1 || versionHits.Load() != 1 {
		t.Fatalf("checks: vllm /health %d, ollama /api/version %d; want 1 each", vllm.hits.Load(), versionHits.Load())
	}

	// Without health_check.path only the backend with its own path is
	// checked; the other is left alone, and available.
	p = mustPool(t, PoolConfig{Backends: backends})
	h := NewHealthChecker(p, config.HealthCheck{}, nil)
	if !h.Enabled() {
		t.Fatal("a backend's own path did not enable checks")
	}
	h.RunOnce(context.Background())
	if vllm.hits.Load() != 1 || versionHits.Load() != 2 {
		t.Fatalf("checks: vllm /health %d, ollama /api/version %d; want 1 and 2", vllm.hits.Load(), versionHits.Load())
	}
	if !p.ByName("vllm").Available(time.Now()) {
		t.Fatal("unchecked backend not available")
	}

	// enabled: false turns every check off, the backends' own paths too.
	off := false
	if NewHealthChecker(p, config.HealthCheck{Enabled: &off}, nil).Enabled() {
		t.Fatal("enabled: false left checks on")
	}
}

func TestHealthCheckerDisabled(t *testing.T) {
	s := newFlipServer(t)
	p := mustPool(t, PoolConfig{Backends: []config.Backend{{URL: s.URL}}})
	off := false
	for name, cfg := range map[string]config.HealthCheck{
		"no path":     {},
		"enabled off": {Path: "/health", Enabled: &off},
	} {
		h := NewHealthChecker(p, cfg, s.Client())
		if h.Enabled() {
			t.Errorf("%s: enabled", name)
		}
		h.Start(context.Background())
	}
	if s.hits.Load() != 0 {
		t.Fatalf("disabled checker sent %d checks", s.hits.Load())
	}
	if !p.Upstreams()[0].Available(time.Now()) {
		t.Fatal("unchecked upstream not available")
	}
}

func TestLoadScrape(t *testing.T) {
	a, b := newFlipServer(t), newFlipServer(t)
	ma := "vllm:num_requests_waiting{model_name=\"m\"} 4\nvllm:gpu_cache_usage_perc 0.5\n"
	mb := "vllm:num_requests_waiting{model_name=\"m\"} 1\n"
	a.metrics.Store(&ma)
	b.metrics.Store(&mb)
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{
		Backends:    []config.Backend{{URL: a.URL, Name: "a"}, {URL: b.URL, Name: "b"}},
		Strategy:    LeastLoad,
		Clock:       clk,
		Rand:        seeded(1),
		HealthCheck: config.HealthCheck{Interval: config.Duration(10 * time.Second)},
	})
	p.ByName("b").Acquire()
	h := NewHealthChecker(p, config.HealthCheck{}, a.Client())
	if !h.Enabled() {
		t.Fatal("least_load scraping should enable the checker without a health path")
	}
	h.RunOnce(context.Background())
	if a.hits.Load() != 0 {
		t.Error("health path checked without health_check.path")
	}
	la := p.ByName("a").LastLoad()
	if la == nil || la.Waiting != 4 || la.GPUCache != 0.5 || !la.At.Equal(clk.Now()) {
		t.Fatalf("a load = %+v", la)
	}
	if lb := p.ByName("b").LastLoad(); lb == nil || lb.InFlightAtScrape != 1 {
		t.Fatalf("b load = %+v", lb)
	}
	for range 5 {
		if u, _ := p.Pick("", nil); u.Name != "b" {
			t.Fatalf("picked %s, want b (fewest waiting)", u.Name)
		}
	}
	// Past 3 × interval without a scrape: least connections, b has one.
	clk.Advance(31 * time.Second)
	if u, _ := p.Pick("", nil); u.Name != "a" {
		t.Fatalf("stale: picked %s, want a", u.Name)
	}
}

// TestHealthCheckerSaysWhyABackendIsDown: the line of a backend marked down
// says what its check met: a status, or a connection refused, without the
// backend's URL.
func TestHealthCheckerSaysWhyABackendIsDown(t *testing.T) {
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	p := mustPool(t, PoolConfig{Backends: []config.Backend{{URL: failing.URL, Name: "failing"}, {URL: deadURL, Name: "dead"}}})
	h := NewHealthChecker(p, config.HealthCheck{Path: "/health", UnhealthyThreshold: 1}, nil)
	var out bytes.Buffer
	var mu sync.Mutex
	h.SetLogger(slog.New(slog.NewTextHandler(lockedWriter{&mu, &out}, nil)))
	h.RunOnce(context.Background())
	mu.Lock()
	log := out.String()
	mu.Unlock()
	for _, want := range []string{`backend=failing healthy=false reason="status 503 from /health"`, `backend=dead healthy=false reason="dial tcp`} {
		if !strings.Contains(log, want) {
			t.Errorf("log:\n%s\nwant %s", log, want)
		}
	}
	if strings.Contains(log, deadURL) {
		t.Errorf("log quotes the backend's URL:\n%s", log)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestHealthChecksSpacedAfterASlowOne: a backend coming back passes its
// healthy_threshold checks at least interval apart, counted from the end of
// the check that hung until it came back; with a ticker, the tick kept while
// that check hung started the next one at once, and the backend was marked
// up within moments. A backend that hangs holds up no other's checks.
func TestHealthChecksSpacedAfterASlowOne(t *testing.T) {
	const interval = 100 * time.Millisecond
	const (
		down = iota
		hanging
		up
	)
	var mode atomic.Int32
	release := make(chan struct{})
	var passed atomic.Int64 // unix nanos of the hung check's end
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case down:
			w.WriteHeader(http.StatusServiceUnavailable)
		case hanging:
			<-release
			passed.Store(time.Now().UnixNano())
		}
	}))
	defer slow.Close()
	defer func() { // before Close, which waits for a hung check
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	other := newFlipServer(t)
	p := mustPool(t, PoolConfig{Backends: []config.Backend{{URL: slow.URL, Name: "slow"}, {URL: other.URL, Name: "other"}}})
	h := NewHealthChecker(p, config.HealthCheck{
		Path: "/health", Interval: config.Duration(interval), Timeout: config.Duration(time.Minute),
		HealthyThreshold: 3, UnhealthyThreshold: 1,
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.Start(ctx)
	if got := p.ByName("slow").State(); got != StateUnhealthy {
		t.Fatalf("state = %s, want unhealthy", got)
	}
	mode.Store(hanging)
	// The other backend goes on being checked while slow's check hangs.
	before := other.hits.Load()
	time.Sleep(8 * interval)
	if got := other.hits.Load() - before; got < 3 {
		t.Errorf("the other backend was checked %d times while one hung, want several", got)
	}
	mode.Store(up)
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for p.ByName("slow").State() != StateHealthy {
		if time.Now().After(deadline) {
			t.Fatal("the backend was not marked up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The hung check was the first pass; two more, each interval after the
	// one before ended.
	if took := time.Since(time.Unix(0, passed.Load())); took < 2*interval {
		t.Errorf("marked up %s after the hung check passed, want at least %s (two more checks, interval apart)", took, 2*interval)
	}
}
