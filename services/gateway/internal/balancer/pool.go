package balancer

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Pick errors. The proxy maps them to HTTP statuses.
var (
	// ErrModelNotFound means no upstream lists the model (404
	// model_not_found).
	ErrModelNotFound = errors.New("no backend serves the model")
	// ErrNoAvailable means upstreams serve the model but all are down
	// or already tried in this request (503).
	ErrNoAvailable = errors.New("no backend available")
)

// Defaults applied by NewPool to zero values of the health config.
const (
	DefaultFailureThreshold = 3
	DefaultCooldown         = 10 * time.Second
	DefaultHealthInterval   = 10 * time.Second
)

// PoolConfig is what a Pool is built from.
type PoolConfig struct {
	// Backends are the configured backends (backends[]).
	Backends []config.Backend
	// Strategy is routing.load_balance_strategy ("" = round_robin).
	Strategy string
	// Fallback is routing.fallback[]; entries name backends by name or URL.
	Fallback []config.Fallback
	// HealthCheck gives the passive ejection settings (failure_threshold,
	// cooldown) and the check interval that bounds a scrape's age.
	HealthCheck config.HealthCheck
	// LoadMaxAge is how old a load scrape may be before least_load falls
	// back to least_connections (default 3 × health interval).
	LoadMaxAge time.Duration
	// NewTransport builds each upstream's Transport (default
	// NewTransport, from the backend's timeouts).
	NewTransport func(config.Backend) http.RoundTripper
	// Clock defaults to SystemClock.
	Clock Clock
	// Rand defaults to GlobalRand.
	Rand Rand
	// Previous is the pool this one replaces (a reload), if any: a
	// backend whose config is unchanged keeps its Upstream, with the
	// requests in flight on it, its passive ejection and failure count,
	// its health verdict, its TTFT average and load scrape, and its idle
	// connections, so that a reload does not reset what least_connections,
	// latency_based, least_load and ejection go by.
	Previous *Pool
}

// Pool is the set of upstreams and the strategy choosing among them. It is
// immutable after NewPool apart from the upstreams' atomic state, and safe
// for concurrent use; Pick takes no lock of its own (the weighted strategy
// holds a mutex for its small state).
type Pool struct {
	upstreams []*Upstream
	byName    map[string]*Upstream
	// byModel lists, per model named by some backend, the upstreams that
	// serve it (including those serving every model); anyModel are the
	// upstreams without a Models list. A model only standbys serve has
	// none (see routable).
	byModel   map[string][]*Upstream
	anyModel  []*Upstream
	fallbacks map[*Upstream][]*Upstream
	picker    Picker
	strategy  string
	clock     Clock
}

// NewPool validates cfg and builds the pool. Errors name the config key.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("backends: at least one backend is required")
	}
	clock := cfg.Clock
	if clock == nil {
		clock = SystemClock
	}
	rnd := cfg.Rand
	if rnd == nil {
		rnd = GlobalRand
	}
	threshold := cfg.HealthCheck.FailureThreshold
	if threshold == 0 {
		threshold = DefaultFailureThreshold
	}
	cooldown := cfg.HealthCheck.Cooldown.D()
	if cooldown <= 0 {
		cooldown = DefaultCooldown
	}
	maxAge := cfg.LoadMaxAge
	if maxAge <= 0 {
		interval := cfg.HealthCheck.Interval.D()
		if interval <= 0 {
			interval = DefaultHealthInterval
		}
		maxAge = 3 * interval
	}
	picker, err := NewPicker(cfg.Strategy, rnd, clock, maxAge)
	if err != nil {
		return nil, fmt.Errorf("routing.load_balance_strategy: %w", err)
	}
	newTransport := cfg.NewTransport
	if newTransport == nil {
		newTransport = NewTransport
	}
	strategy := cfg.Strategy
	if strategy == "" {
		strategy = RoundRobin
	}
	p := &Pool{
		byName:    make(map[string]*Upstream),
		byModel:   make(map[string][]*Upstream),
		fallbacks: make(map[*Upstream][]*Upstream),
		picker:    picker,
		strategy:  strategy,
		clock:     clock,
	}
	// A backend given weight 0 beside others with a weight is a standby:
	// it takes no traffic of its own and is reached only through
	// routing.fallback. When no backend has a weight (all zero, as in a
	// Backend built without config defaults) every one counts as 1.
	anyWeight := false
	for _, b := range cfg.Backends {
		anyWeight = anyWeight || b.Weight > 0
	}
	for i, b := range cfg.Backends {
		standby := anyWeight && b.Weight == 0
		u := cfg.Previous.same(b, int64(threshold), cooldown, standby)
		if u == nil {
			var err error
			if u, err = newUpstream(b, clock, int64(threshold), cooldown); err != nil {
				return nil, fmt.Errorf("backends[%d]: %w", i, err)
			}
			u.standby = standby
			u.Transport = newTransport(b)
		}
		if _, dup := p.byName[u.Name]; dup {
			return nil, fmt.Errorf("backends[%d].name: duplicate backend %q", i, u.Name)
		}
		p.byName[u.Name] = u
		p.upstreams = append(p.upstreams, u)
		if len(u.Models) == 0 {
			p.anyModel = append(p.anyModel, u)
		}
	}
	for _, u := range p.upstreams {
		for m := range u.modelKeys {
			if _, done := p.byModel[m]; done {
				continue
			}
			var us []*Upstream
			for _, v := range p.upstreams {
				if v.Serves(m) {
					us = append(us, v)
				}
			}
			p.byModel[m] = routable(us)
		}
	}
	p.anyModel = routable(p.anyModel)
	for i, f := range cfg.Fallback {
		prim := p.lookup(f.Primary)
		if prim == nil {
			return nil, fmt.Errorf("routing.fallback[%d].primary: no backend named %q", i, f.Primary)
		}
		for j, ref := range f.Fallback {
			fb := p.lookup(ref)
			if fb == nil {
				return nil, fmt.Errorf("routing.fallback[%d].fallback[%d]: no backend named %q", i, j, ref)
			}
			if fb == prim {
				return nil, fmt.Errorf("routing.fallback[%d].fallback[%d]: %q falls back to itself", i, j, ref)
			}
			p.fallbacks[prim] = append(p.fallbacks[prim], fb)
		}
	}
	return p, nil
}

// routable returns us, or none of them when every one is a standby: a
// standby is reached only through the fallback chain of a backend that
// serves the same model and can take traffic of its own, so a model only
// standbys serve is served by no backend (404 model_not_found), rather
// than one whose backends are all unavailable (503, try again) while every
// one is healthy.
func routable(us []*Upstream) []*Upstream {
	for _, u := range us {
		if !u.standby {
			return us
		}
	}
	return nil
}

func newUpstream(b config.Backend, clock Clock, threshold int64, cooldown time.Duration) (*Upstream, error) {
	u, err := url.Parse(b.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url: %q is not an http(s) URL", b.URL)
	}
	if b.Weight < 0 {
		return nil, fmt.Errorf("weight: %d is negative", b.Weight)
	}
	up := &Upstream{
		spec:             b,
		Name:             b.Name,
		URL:              u,
		Weight:           max(b.Weight, 1),
		Headers:          b.Headers,
		HealthPath:       b.HealthCheckPath,
		clock:            clock,
		failureThreshold: threshold,
		cooldown:         cooldown,
	}
	if up.Name == "" {
		up.Name = b.URL
	}
	if b.TLS.IsSet() {
		c, err := b.TLS.Load()
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		// Health checks go with the backend's own trust and identity.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = c
		up.healthClient = &http.Client{Transport: t, CheckRedirect: sameOrigin}
	}
	if len(b.Models) > 0 {
		up.Models = make(map[string]struct{}, len(b.Models))
		up.modelKeys = make(map[string]struct{}, len(b.Models))
		for _, m := range b.Models {
			up.Models[m] = struct{}{}
			up.modelKeys[config.ModelKey(m)] = struct{}{}
		}
	}
	return up, nil
}

// same returns p's upstream for backend b when b's config, and what the
// pool adds to it, are unchanged; nil otherwise (or when p is nil). A
// backend of a pool built without its Transport from the config
// (PoolConfig.NewTransport) is reused all the same: the config it was
// built from is the same.
func (p *Pool) same(b config.Backend, threshold int64, cooldown time.Duration, standby bool) *Upstream {
	if p == nil {
		return nil
	}
	name := b.Name
	if name == "" {
		name = b.URL
	}
	u := p.byName[name]
	if u == nil || u.failureThreshold != threshold || u.cooldown != cooldown || u.standby != standby ||
		!reflect.DeepEqual(u.spec, b) || b.TLS.IsSet() {
		// A backend with TLS files is made again: a reload reads
		// them again (certificates rotated in place).
		return nil
	}
	return u
}

// lookup finds an upstream by name, or by URL ignoring a trailing slash.
func (p *Pool) lookup(ref string) *Upstream {
	if u, ok := p.byName[ref]; ok {
		return u
	}
	want := strings.TrimRight(ref, "/")
	for _, u := range p.upstreams {
		if strings.TrimRight(u.URL.String(), "/") == want {
			return u
		}
	}
	return nil
}

// Pick chooses an upstream for model among those that serve it, are
// available now, are not standbys (weight 0) and for which tried (nil =
// none tried) returns false, and the stand-ins of those that are down or
// ejected: the first of each one's routing.fallback chain that can take
// the request (see choose). When none is left, it takes the first such
// upstream, standbys included, from the chains of the upstreams serving
// the model that are unavailable or tried, in config order.
//
// When no upstream for the model is available at all, tried or not, Pick
// chooses the same way among those that are only passively ejected (panic
// mode, as nginx does with a single server and Envoy below its panic
// threshold): an ejection is a guess from a few failures, and answering
// 503 to every request for a whole cooldown is worse than trying. Those
// the active health checks mark down are never chosen.
//
// It returns ErrModelNotFound when no upstream serves the model at all and
// ErrNoAvailable when some do but none can be used.
func (p *Pool) Pick(model string, tried func(*Upstream) bool) (*Upstream, error) {
	serving := p.serving(model)
	if len(serving) == 0 {
		return nil, ErrModelNotFound
	}
	now := p.clock.Now()
	cands := make([]*Upstream, 0, len(serving))
	cands, fb, standIns := p.choose(model, serving, cands, now, tried, false)
	if len(cands) > 0 {
		return p.pick(serving, cands, tried, standIns), nil
	}
	if fb != nil {
		return fb, nil
	}
	if tried != nil {
		// An available upstream that was tried already is the caller's
		// to try again; the ejected ones are not tried before it.
		if c, fb, _ := p.choose(model, serving, cands, now, nil, false); len(c) > 0 || fb != nil {
			return nil, ErrNoAvailable
		}
	}
	cands, fb, standIns = p.choose(model, serving, cands, now, tried, true)
	if len(cands) > 0 {
		return p.pick(serving, cands, tried, standIns), nil
	}
	if fb != nil {
		return fb, nil
	}
	return nil, ErrNoAvailable
}

// pick has the picker choose among cands, as a retry's pick when one of
// serving was tried already, and with the weights of the primaries their
// stand-ins take the place of (see choose).
func (p *Pool) pick(serving, cands []*Upstream, tried func(*Upstream) bool, standIns map[*Upstream]int) *Upstream {
	if wp, ok := p.picker.(*WeightedPicker); ok && standIns != nil {
		return wp.pickWith(cands, standIns)
	}
	if rp, ok := p.picker.(RetryPicker); ok && tried != nil && slices.ContainsFunc(serving, tried) {
		return rp.PickRetry(cands)
	}
	return p.picker.Pick(cands)
}

// choose appends to cands[:0] the upstreams of serving, standbys aside,
// that may take the request and were not tried, and returns them. A
// primary that cannot take it (down, ejected; not one this request
// tried) lends its place to the first of its fallback chain that can:
// that upstream joins cands, and standIns gives it the primary's weight
// (added to its own, and summed over the primaries it stands in for).
// When cands is empty it also returns the first upstream that may take
// the request, serves model and was not tried from the fallback chains of
// those in serving that cannot take it themselves, or nil. An upstream may
// take the request when it is available, or with ejected set when only the
// active health checks do not mark it down.
func (p *Pool) choose(model string, serving, cands []*Upstream, now time.Time, tried func(*Upstream) bool, ejected bool) (_ []*Upstream, fb *Upstream, standIns map[*Upstream]int) {
	avail := func(u *Upstream) bool {
		if ejected {
			return u.Healthy()
		}
		return u.Available(now)
	}
	usable := func(u *Upstream) bool { return avail(u) && (tried == nil || !tried(u)) }
	cands = cands[:0]
	down := false
	for _, u := range serving {
		if u.standby {
			continue
		}
		if usable(u) {
			cands = append(cands, u)
		} else if !avail(u) {
			down = true
		}
	}
	if down && len(p.fallbacks) > 0 {
		for _, prim := range serving {
			if prim.standby || avail(prim) {
				continue
			}
			u := firstUsable(p.fallbacks[prim], model, usable)
			if u == nil {
				continue
			}
			if standIns == nil {
				standIns = make(map[*Upstream]int)
			}
			if _, ok := standIns[u]; !ok && !slices.Contains(cands, u) {
				cands = append(cands, u)
			}
			standIns[u] += max(prim.Weight, 1)
		}
	}
	if len(cands) > 0 {
		return cands, nil, standIns
	}
	for _, prim := range serving {
		if usable(prim) {
			continue
		}
		if u := firstUsable(p.fallbacks[prim], model, usable); u != nil {
			return cands, u, nil
		}
	}
	return cands, nil, nil
}

// firstUsable returns the first upstream of chain that serves model and
// is usable, or nil.
func firstUsable(chain []*Upstream, model string, usable func(*Upstream) bool) *Upstream {
	for _, u := range chain {
		if u.Serves(model) && usable(u) {
			return u
		}
	}
	return nil
}

// serving returns the upstreams that serve model; the slice is shared and
// must not be modified.
func (p *Pool) serving(model string) []*Upstream {
	if model == "" {
		return p.upstreams
	}
	if us, ok := p.byModel[config.ModelKey(model)]; ok {
		return us
	}
	return p.anyModel
}

// HasModel reports whether any upstream serves model.
func (p *Pool) HasModel(model string) bool { return len(p.serving(model)) > 0 }

// FallbackChain returns the configured fallbacks of a primary, in order,
// or nil. The slice is shared and must not be modified.
func (p *Pool) FallbackChain(u *Upstream) []*Upstream { return p.fallbacks[u] }

// FallbackFor returns the backends to try next, in order, once up has
// failed a request for model: up's own routing.fallback chain or, when up
// has none and was picked from the chain of a primary for model that
// cannot take requests (down or ejected), that primary's chain, so that
// its later members are tried as they are after the primary itself
// failed. The slice is shared and must not be modified; nil when there is
// neither.
func (p *Pool) FallbackFor(model string, up *Upstream) []*Upstream {
	if chain := p.fallbacks[up]; len(chain) > 0 {
		return chain
	}
	now := p.clock.Now()
	for _, prim := range p.serving(model) {
		chain := p.fallbacks[prim]
		if prim == up || len(chain) == 0 || prim.Available(now) {
			continue
		}
		for _, u := range chain {
			if u == up {
				return chain
			}
		}
	}
	return nil
}

// Upstreams returns every upstream in config order. The slice is shared
// and must not be modified.
func (p *Pool) Upstreams() []*Upstream { return p.upstreams }

// ByName returns the upstream with that name (or URL), or nil.
func (p *Pool) ByName(name string) *Upstream { return p.lookup(name) }

// Strategy returns the load-balancing strategy's name.
func (p *Pool) Strategy() string { return p.strategy }

// Now returns the pool's clock reading; pass it to ReportFailure.
func (p *Pool) Now() time.Time { return p.clock.Now() }

// UpstreamStatus is one upstream in a Snapshot.
type UpstreamStatus struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	State    string `json:"state"`
	InFlight int64  `json:"inflight"`
}

// AnyHealthy reports whether any upstream is still sent requests: one the
// active health checks do not mark down (an ejected one is tried when
// nothing else is left).
func (p *Pool) AnyHealthy() bool {
	for _, u := range p.upstreams {
		if u.Healthy() {
			return true
		}
	}
	return false
}

// Snapshot returns every upstream's state, in config order, for /readyz.
// URLs are given without credentials.
func (p *Pool) Snapshot() []UpstreamStatus {
	now := p.clock.Now()
	out := make([]UpstreamStatus, len(p.upstreams))
	for i, u := range p.upstreams {
		out[i] = UpstreamStatus{
			Name:     u.Name,
			URL:      u.URL.Redacted(),
			State:    u.stateAt(now),
			InFlight: u.InFlight(),
		}
	}
	return out
}
