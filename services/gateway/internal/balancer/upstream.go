package balancer

import (
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Upstream states reported by Upstream.State and in Snapshot.
const (
	StateHealthy   = "healthy"
	StateUnhealthy = "unhealthy"
	StateEjected   = "ejected"
)

// ttftAlpha is the weight of a new time-to-first-token sample in the EWMA.
// 0.3 forgets a sample after roughly ten requests, fast enough to follow an
// engine that starts queueing, slow enough to ignore one long prompt.
const ttftAlpha = 0.3

// Upstream is one inference backend, made by NewPool. Its identity (Name,
// URL, Weight, Models, Headers, Transport) is fixed when the Pool is built
// and must not be changed;
// its state is held in atomics, so every method is safe for concurrent use
// and an Upstream must not be copied.
type Upstream struct {
	// spec is the backend's config, which a reloaded pool compares to
	// keep this Upstream (PoolConfig.Previous).
	spec config.Backend
	// Name is the backend's configured name, or its URL.
	Name string
	// URL is the backend's base URL.
	URL *url.URL
	// Weight is the backend's share for the weighted strategy (≥ 1).
	Weight int
	// Models, when non-empty, are the only models routed here, as the
	// config names them; modelKeys the same in config.ModelKey's form.
	Models    map[string]struct{}
	modelKeys map[string]struct{}
	// Headers are added to every request to this backend (credentials).
	Headers map[string]string
	// HealthPath is the path this backend is actively checked at, when its
	// config sets one (health_check_path); empty means health_check.path.
	HealthPath string
	// Transport carries requests to this backend with its connect and
	// first-byte timeouts; it keeps the backend's idle connections.
	Transport http.RoundTripper

	// healthClient, when set (a backend with TLS files), makes its
	// health checks in place of the checker's client.
	healthClient *http.Client

	// standby is set for a backend configured with weight 0 beside
	// weighted ones: Pool.Pick never chooses it; fallback chains may.
	standby bool

	clock            Clock
	failureThreshold int64
	cooldown         time.Duration

	inflight     atomic.Int64
	failures     atomic.Int64 // consecutive passive failures
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 = never ejected
	ejections    atomic.Uint64
	unhealthy    atomic.Bool // active health verdict; starts healthy

	// Active health bookkeeping, written only by the health checker.
	checked    atomic.Bool
	checkPass  atomic.Int64
	checkFails atomic.Int64

	ttft atomic.Uint64        // math.Float64bits of the EWMA in nanoseconds; 0 = no sample
	load atomic.Pointer[Load] // last scraped engine load; nil = never scraped
}

// Load is an engine's queue as last scraped from its /metrics.
type Load struct {
	// Waiting is the number of requests queued in the engine
	// (vllm:num_requests_waiting, tgi_queue_size,
	// llamacpp:requests_deferred).
	Waiting float64
	// Running is the number of requests being decoded
	// (vllm:num_requests_running, llamacpp:requests_processing).
	Running float64
	// GPUCache is the KV-cache usage as a fraction 0..1
	// (vllm:gpu_cache_usage_perc), or -1 when the engine does not say.
	GPUCache float64
	// At is when the scrape finished.
	At time.Time
	// InFlightAtScrape is this gateway's in-flight count for the upstream
	// when the scrape finished; requests sent since are added to Waiting
	// by least_load so that a stale scrape does not attract a herd.
	InFlightAtScrape int64
}

// Available reports whether the upstream may take a new request at now: it
// passed its active health checks and is not passively ejected.
func (u *Upstream) Available(now time.Time) bool {
	return !u.unhealthy.Load() && !u.Ejected(now)
}

// Standby reports whether the upstream was configured with weight 0: it
// takes no traffic of its own and serves only as a fallback.
func (u *Upstream) Standby() bool { return u.standby }

// Healthy reports the active health checker's verdict.
func (u *Upstream) Healthy() bool { return !u.unhealthy.Load() }

// Ejected reports whether passive failure ejection is in force at now.
func (u *Upstream) Ejected(now time.Time) bool {
	return now.UnixNano() < u.ejectedUntil.Load()
}

// Serves reports whether model may be routed here. An upstream without a
// Models list serves every model; an empty model is served by everyone.
func (u *Upstream) Serves(model string) bool {
	if len(u.Models) == 0 || model == "" {
		return true
	}
	_, ok := u.modelKeys[config.ModelKey(model)]
	return ok
}

// Acquire counts a request in flight. The caller must call Release exactly
// once, when the response (the whole stream) has ended.
func (u *Upstream) Acquire() { u.inflight.Add(1) }

// Release ends a request counted by Acquire.
func (u *Upstream) Release() { u.inflight.Add(-1) }

// InFlight returns the number of requests currently in flight.
func (u *Upstream) InFlight() int64 { return u.inflight.Load() }

// ObserveTTFT folds one time-to-first-token sample into the EWMA used by
// latency_based.
func (u *Upstream) ObserveTTFT(d time.Duration) {
	if d <= 0 {
		d = 1
	}
	s := float64(d)
	for {
		old := u.ttft.Load()
		next := s
		if old != 0 {
			next = ttftAlpha*s + (1-ttftAlpha)*math.Float64frombits(old)
		}
		if u.ttft.CompareAndSwap(old, math.Float64bits(next)) {
			return
		}
	}
}

// TTFT returns the EWMA of time to first token, and false when no sample
// has been observed yet.
func (u *Upstream) TTFT() (time.Duration, bool) {
	v := u.ttft.Load()
	if v == 0 {
		return 0, false
	}
	return time.Duration(math.Float64frombits(v)), true
}

// ReportSuccess records a successful try; it resets the consecutive failure
// count.
func (u *Upstream) ReportSuccess() { u.failures.Store(0) }

// ReportFailure records a failed request at now (connect error, timeout,
// 5xx); the proxy reports a request once however many of its retries
// failed here. After the pool's FailureThreshold consecutive failures the
// upstream is ejected for Cooldown and the count starts again.
func (u *Upstream) ReportFailure(now time.Time) {
	if u.failureThreshold <= 0 {
		return
	}
	if u.failures.Add(1) < u.failureThreshold {
		return
	}
	u.failures.Store(0)
	u.ejectedUntil.Store(now.Add(u.cooldown).UnixNano())
	u.ejections.Add(1)
}

// Ejections returns how many times the upstream was passively ejected.
func (u *Upstream) Ejections() uint64 { return u.ejections.Load() }

// State is "unhealthy" when active checks fail, else "ejected" while a
// passive ejection lasts, else "healthy".
func (u *Upstream) State() string { return u.stateAt(u.clock.Now()) }

func (u *Upstream) stateAt(now time.Time) string {
	switch {
	case u.unhealthy.Load():
		return StateUnhealthy
	case u.Ejected(now):
		return StateEjected
	default:
		return StateHealthy
	}
}

// LastLoad returns the last scraped load, or nil when none was scraped.
func (u *Upstream) LastLoad() *Load { return u.load.Load() }

// SetLoad records a scraped load (used by the load scraper and tests).
func (u *Upstream) SetLoad(l Load) { u.load.Store(&l) }

// forgetChecks drops the active health verdict and its counts, for an
// upstream no longer actively checked; it reports whether the upstream
// was marked down. Only the health checker calls it, before it starts.
func (u *Upstream) forgetChecks() bool {
	u.checked.Store(false)
	u.checkPass.Store(0)
	u.checkFails.Store(0)
	return u.unhealthy.Swap(false)
}

// recordCheck applies one active health check result with thresholds. The
// first result decides at once, so the gateway does not route to a backend
// found down at start. Only the health checker calls it, one goroutine per
// upstream at a time.
func (u *Upstream) recordCheck(ok bool, healthyThreshold, unhealthyThreshold int) {
	first := !u.checked.Swap(true)
	if ok {
		u.checkFails.Store(0)
		n := u.checkPass.Add(1)
		if first || n >= int64(healthyThreshold) {
			u.unhealthy.Store(false)
		}
		return
	}
	u.checkPass.Store(0)
	n := u.checkFails.Add(1)
	if first || n >= int64(unhealthyThreshold) {
		u.unhealthy.Store(true)
	}
}

// SetHeaders adds u's configured headers to req; a Host among them is the
// request's Host (net/http writes req.Host, not a Host header): a backend
// behind an ingress that routes by virtual host.
func (u *Upstream) SetHeaders(req *http.Request) {
	for k, v := range u.Headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
}
