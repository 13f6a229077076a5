package balancer

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

func TestPickModelFiltering(t *testing.T) {
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{
		Backends: []config.Backend{
			{URL: "http://qwen-1:8000", Name: "qwen-1", Models: []string{"qwen2.5-72b"}},
			{URL: "http://qwen-2:8000", Name: "qwen-2", Models: []string{"qwen2.5-72b", "qwen2.5-7b"}},
			{URL: "http://llama:8000", Name: "llama", Models: []string{"llama-3-8b"}},
			{URL: "http://ollama-1:11434", Name: "ollama-1", Models: []string{"llama3"}},
			{URL: "http://ollama-2:11434", Name: "ollama-2", Models: []string{"mistral:latest", "phi3:mini"}},
		},
		Clock: clk,
	})
	none := func(*Upstream) bool { return false }
	tests := []struct {
		model   string
		tried   []string
		down    []string
		want    []string // acceptable picks
		wantErr error
	}{
		{model: "qwen2.5-72b", want: []string{"qwen-1", "qwen-2"}},
		{model: "qwen2.5-7b", want: []string{"qwen-2"}},
		{model: "llama-3-8b", want: []string{"llama"}},
		{model: "gpt-4o", wantErr: ErrModelNotFound},
		{model: "qwen2.5-72b", tried: []string{"qwen-1"}, want: []string{"qwen-2"}},
		{model: "qwen2.5-72b", tried: []string{"qwen-1", "qwen-2"}, wantErr: ErrNoAvailable},
		{model: "qwen2.5-7b", down: []string{"qwen-2"}, wantErr: ErrNoAvailable},
		{model: "llama-3-8b", down: []string{"qwen-1", "qwen-2"}, want: []string{"llama"}},
		// Ollama's name and name:latest are one model, either way round;
		// another tag is another model.
		{model: "llama3:latest", want: []string{"ollama-1"}},
		{model: "mistral", want: []string{"ollama-2"}},
		{model: "phi3", wantErr: ErrModelNotFound},
		{model: "llama3:8b", wantErr: ErrModelNotFound},
	}
	for _, tt := range tests {
		name := tt.model + "/tried=" + strings.Join(tt.tried, ",") + "/down=" + strings.Join(tt.down, ",")
		t.Run(name, func(t *testing.T) {
			for _, u := range p.Upstreams() {
				u.unhealthy.Store(false)
			}
			for _, n := range tt.down {
				p.ByName(n).unhealthy.Store(true)
			}
			tried := none
			if tt.tried != nil {
				tried = func(u *Upstream) bool {
					for _, n := range tt.tried {
						if u.Name == n {
							return true
						}
					}
					return false
				}
			}
			for range 4 {
				u, err := p.Pick(tt.model, tried)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if err != nil {
					return
				}
				ok := false
				for _, n := range tt.want {
					ok = ok || u.Name == n
				}
				if !ok {
					t.Fatalf("picked %s, want one of %v", u.Name, tt.want)
				}
			}
		})
	}
}

func TestPickServeAllBackends(t *testing.T) {
	p := mustPool(t, PoolConfig{Backends: []config.Backend{
		{URL: "http://any:8000"},
		{URL: "http://qwen:8000", Models: []string{"qwen"}},
	}})
	for _, tt := range []struct{ model, want string }{{"other", "http://any:8000"}} {
		u, err := p.Pick(tt.model, nil)
		if err != nil || u.Name != tt.want {
			t.Fatalf("Pick(%q) = %v, %v; want %s", tt.model, u, err, tt.want)
		}
	}
	seen := map[string]bool{}
	for range 4 {
		u, err := p.Pick("qwen", nil)
		if err != nil {
			t.Fatal(err)
		}
		seen[u.Name] = true
	}
	if len(seen) != 2 {
		t.Fatalf("qwen went to %v, want both (the catch-all serves it too)", seen)
	}
	if !p.HasModel("anything") {
		t.Fatal("catch-all backend should serve any model")
	}
}

func TestPassiveEjectionAndCooldown(t *testing.T) {
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{
		Backends:    backends(2),
		HealthCheck: config.HealthCheck{FailureThreshold: 3, Cooldown: config.Duration(10 * time.Second)},
		Clock:       clk,
	})
	b0 := p.ByName("b0")
	b0.ReportFailure(clk.Now())
	b0.ReportFailure(clk.Now())
	b0.ReportSuccess() // resets the run
	b0.ReportFailure(clk.Now())
	b0.ReportFailure(clk.Now())
	if b0.State() != StateHealthy || !b0.Available(clk.Now()) {
		t.Fatalf("ejected after non-consecutive failures: %s", b0.State())
	}
	b0.ReportFailure(clk.Now())
	if b0.State() != StateEjected || b0.Available(clk.Now()) {
		t.Fatalf("state = %s after 3 failures, want ejected", b0.State())
	}
	if b0.Ejections() != 1 {
		t.Fatalf("ejections = %d", b0.Ejections())
	}
	for range 10 {
		u, err := p.Pick("", nil)
		if err != nil || u == b0 {
			t.Fatalf("picked %v, %v while b0 ejected", u, err)
		}
	}
	clk.Advance(9 * time.Second)
	if b0.Available(clk.Now()) {
		t.Fatal("back before cooldown ended")
	}
	clk.Advance(time.Second)
	if !b0.Available(clk.Now()) || b0.State() != StateHealthy {
		t.Fatalf("state = %s after cooldown, want healthy", b0.State())
	}
	// The failure run starts over after an ejection.
	b0.ReportFailure(clk.Now())
	if !b0.Available(clk.Now()) {
		t.Fatal("one failure after cooldown re-ejected")
	}
}

func TestStateUnhealthyWinsOverEjected(t *testing.T) {
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{Backends: backends(1), Clock: clk})
	u := p.ByName("b0")
	for range DefaultFailureThreshold {
		u.ReportFailure(clk.Now())
	}
	u.recordCheck(false, 1, 1)
	if u.State() != StateUnhealthy {
		t.Fatalf("state = %s", u.State())
	}
	if _, err := p.Pick("", nil); !errors.Is(err, ErrNoAvailable) {
		t.Fatalf("err = %v, want ErrNoAvailable", err)
	}
}

func TestFallbackChain(t *testing.T) {
	p := mustPool(t, PoolConfig{
		Backends: backends(4),
		Fallback: []config.Fallback{
			{Primary: "http://b0.test:8000/", Fallback: []string{"b2", "http://b1.test:8000"}},
			{Primary: "b3", Fallback: []string{"b0"}},
		},
	})
	names := func(us []*Upstream) string {
		var s []string
		for _, u := range us {
			s = append(s, u.Name)
		}
		return strings.Join(s, ",")
	}
	if got := names(p.FallbackChain(p.ByName("b0"))); got != "b2,b1" {
		t.Errorf("chain(b0) = %s", got)
	}
	if got := names(p.FallbackChain(p.ByName("http://b3.test:8000"))); got != "b0" {
		t.Errorf("chain(b3) = %s", got)
	}
	if got := p.FallbackChain(p.ByName("b1")); got != nil {
		t.Errorf("chain(b1) = %v, want none", got)
	}
	if p.ByName("nope") != nil {
		t.Error("ByName(nope) found something")
	}
}

func TestNewPoolErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  PoolConfig
		want string
	}{
		{"no backends", PoolConfig{}, "backends"},
		{"bad url", PoolConfig{Backends: []config.Backend{{URL: "vllm:8000"}}}, "backends[0]: url"},
		{"duplicate", PoolConfig{Backends: []config.Backend{{URL: "http://a"}, {URL: "http://a"}}}, "backends[1].name"},
		{"strategy", PoolConfig{Backends: backends(1), Strategy: "fastest"}, "routing.load_balance_strategy"},
		{"fallback primary", PoolConfig{Backends: backends(1), Fallback: []config.Fallback{{Primary: "x"}}}, "routing.fallback[0].primary"},
		{"fallback entry", PoolConfig{Backends: backends(1), Fallback: []config.Fallback{{Primary: "b0", Fallback: []string{"y"}}}}, "routing.fallback[0].fallback[0]"},
		{"fallback to self", PoolConfig{Backends: backends(1), Fallback: []config.Fallback{{Primary: "b0", Fallback: []string{"b0"}}}}, "itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPool(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

func TestStrategiesByName(t *testing.T) {
	for _, s := range []string{"", RoundRobin, Weighted, LeastConnections, LatencyBased, LeastLoad} {
		p := mustPool(t, PoolConfig{Backends: backends(3), Strategy: s, Rand: seeded(1)})
		for range 10 {
			if _, err := p.Pick("m", nil); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
}

func TestSnapshot(t *testing.T) {
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{
		Backends: []config.Backend{
			{URL: "http://user:secret@a:8000", Name: "a"},
			{URL: "http://b:8000", Name: "b"},
		},
		Clock: clk,
	})
	p.ByName("a").Acquire()
	p.ByName("b").recordCheck(false, 1, 1)
	got := p.Snapshot()
	if len(got) != 2 {
		t.Fatalf("snapshot = %v", got)
	}
	if got[0].State != StateHealthy || got[0].InFlight != 1 || strings.Contains(got[0].URL, "secret") {
		t.Errorf("a = %+v", got[0])
	}
	if got[1].State != StateUnhealthy || got[1].InFlight != 0 {
		t.Errorf("b = %+v", got[1])
	}
	if !p.AnyHealthy() {
		t.Error("AnyHealthy = false with a up")
	}
	p.ByName("a").recordCheck(false, 1, 1)
	if p.AnyHealthy() {
		t.Error("AnyHealthy = true with every upstream marked down")
	}
}

func TestPickConcurrent(t *testing.T) {
	for _, s := range []string{RoundRobin, Weighted, LeastConnections, LatencyBased, LeastLoad} {
		p := mustPool(t, PoolConfig{
			Backends:    backends(3),
			Strategy:    s,
			HealthCheck: config.HealthCheck{FailureThreshold: 1 << 30},
		})
		done := make(chan struct{})
		for range 4 {
			go func() {
				defer func() { done <- struct{}{} }()
				for range 500 {
					u, err := p.Pick("m", nil)
					if err != nil {
						t.Error(err)
						return
					}
					u.Acquire()
					u.ObserveTTFT(time.Millisecond)
					u.ReportFailure(time.Now())
					u.ReportSuccess()
					u.Release()
				}
			}()
		}
		for range 4 {
			<-done
		}
		for _, u := range p.Upstreams() {
			if u.InFlight() != 0 {
				t.Fatalf("%s: %s in flight = %d", s, u.Name, u.InFlight())
			}
		}
	}
}

func TestTransportFromBackendTimeouts(t *testing.T) {
	p := mustPool(t, PoolConfig{Backends: []config.Backend{
		{URL: "http://a:8000", Name: "a", FirstByteTimeout: config.Duration(7 * time.Second), ResponseTimeout: config.Duration(time.Hour)},
		{URL: "http://b:8000", Name: "b"},
		{URL: "https://c:8443", Name: "c", FirstByteTimeout: config.Duration(3 * time.Second)},
	}})
	da, ok := p.ByName("a").Transport.(*DirectTransport)
	if !ok {
		t.Fatalf("a (http): transport = %T", p.ByName("a").Transport)
	}
	ra := da.fallback.(*ReplayTransport)
	want := headTimeouts{firstByte: 7 * time.Second, response: time.Hour}
	if da.heads != want || ra.heads != want || !ra.Transport.DisableCompression {
		t.Errorf("a: head timeouts %+v, fallback's %+v, compression disabled %v", da.heads, ra.heads, ra.Transport.DisableCompression)
	}
	if da.addr != "a:8000" || da.host != "a:8000" {
		t.Errorf("a: dials %q for host %q", da.addr, da.host)
	}
	db := p.ByName("b").Transport.(*DirectTransport)
	if db.heads != (headTimeouts{DefaultFirstByteTimeout, DefaultResponseTimeout}) || db == da {
		t.Errorf("b: head timeouts %+v (shared %v)", db.heads, db == da)
	}
	rc, ok := p.ByName("c").Transport.(*ReplayTransport)
	if !ok {
		t.Fatalf("c (https): transport = %T", p.ByName("c").Transport)
	}
	if rc.heads != (headTimeouts{3 * time.Second, DefaultResponseTimeout}) {
		t.Errorf("c: head timeouts %+v", rc.heads)
	}
}

func TestZeroWeightIsStandby(t *testing.T) {
	bs := backends(3)
	bs[0].Weight, bs[1].Weight, bs[2].Weight = 2, 1, 0
	p := mustPool(t, PoolConfig{Backends: bs, Strategy: RoundRobin, Fallback: []config.Fallback{{Primary: "b0", Fallback: []string{"b2"}}}})
	got := map[string]int{}
	for range 30 {
		u, err := p.Pick("", nil)
		if err != nil {
			t.Fatal(err)
		}
		got[u.Name]++
	}
	if got["b2"] != 0 || got["b0"] == 0 || got["b1"] == 0 {
		t.Fatalf("weight 0 must take no traffic of its own: %v", got)
	}
	if !p.ByName("b2").Standby() || p.ByName("b0").Standby() {
		t.Fatal("standby flags wrong")
	}
	if fb := p.FallbackChain(p.ByName("b0")); len(fb) != 1 || fb[0].Name != "b2" {
		t.Fatalf("the standby must stay reachable as a fallback: %v", fb)
	}
	// Tried everything else: the standby is reached through b0's chain,
	// and a standby in no chain is never chosen.
	if u, err := p.Pick("", func(u *Upstream) bool { return u.Name != "b2" }); err != nil || u.Name != "b2" {
		t.Fatalf("Pick with only b0's fallback left: %v, %v", u, err)
	}
	alone := mustPool(t, PoolConfig{Backends: bs, Strategy: RoundRobin})
	if _, err := alone.Pick("", func(u *Upstream) bool { return u.Name != "b2" }); !errors.Is(err, ErrNoAvailable) {
		t.Fatalf("Pick with only the standby left: %v", err)
	}
	// No weights at all (a Backend built without config defaults): all serve.
	q := mustPool(t, PoolConfig{Backends: backends(2)})
	seen := map[string]bool{}
	for range 4 {
		u, _ := q.Pick("", nil)
		seen[u.Name] = true
	}
	if len(seen) != 2 {
		t.Fatalf("unweighted backends must all serve: %v", seen)
	}
}

// TestPickFallsBackWhenPrimaryUnavailable: a primary that is ejected or
// down is never picked, so Pick itself reads its fallback chain.
func TestPickFallsBackWhenPrimaryUnavailable(t *testing.T) {
	clk := newFakeClock()
	bs := []config.Backend{
		{Name: "vllm-1", URL: "http://vllm-1.test:8000", Weight: 5, Models: []string{"m"}},
		{Name: "vllm-2", URL: "http://vllm-2.test:8000", Weight: 0, Models: []string{"m"}},
		{Name: "other", URL: "http://other.test:8000", Weight: 0, Models: []string{"x"}},
		{Name: "vllm-3", URL: "http://vllm-3.test:8000", Weight: 0, Models: []string{"m"}},
	}
	p := mustPool(t, PoolConfig{
		Backends: bs,
		Fallback: []config.Fallback{{Primary: "vllm-1", Fallback: []string{"other", "vllm-2", "vllm-3"}}},
		Clock:    clk,
	})
	v1, v2 := p.ByName("vllm-1"), p.ByName("vllm-2")
	if u, err := p.Pick("m", nil); err != nil || u != v1 {
		t.Fatalf("healthy primary: picked %v, %v", u, err)
	}
	for range DefaultFailureThreshold {
		v1.ReportFailure(clk.Now())
	}
	for range 3 {
		if u, err := p.Pick("m", nil); err != nil || u != v2 {
			t.Fatalf("ejected primary: picked %v, %v; want vllm-2", u, err)
		}
	}
	// The next in the chain once vllm-2 was tried; none after that.
	isV2 := func(u *Upstream) bool { return u == v2 }
	if u, err := p.Pick("m", isV2); err != nil || u.Name != "vllm-3" {
		t.Fatalf("vllm-2 tried: picked %v, %v; want vllm-3", u, err)
	}
	if _, err := p.Pick("x", nil); !errors.Is(err, ErrModelNotFound) {
		t.Fatalf("model x has no primary, only a standby in no chain for it: %v", err)
	}
	// Down by the active checks rather than ejected: the same.
	clk.Advance(DefaultCooldown)
	v1.recordCheck(false, 1, 1)
	if u, err := p.Pick("m", nil); err != nil || u != v2 {
		t.Fatalf("primary down: picked %v, %v; want vllm-2", u, err)
	}
}

// TestPickEjectedWhenNothingIsAvailable: with every upstream for a model
// down or ejected, the ejected ones are picked by the strategy rather than
// none; those the active checks mark down never are.
func TestPickEjectedWhenNothingIsAvailable(t *testing.T) {
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{Backends: backends(3), Strategy: RoundRobin, Clock: clk})
	b0, b1, b2 := p.ByName("b0"), p.ByName("b1"), p.ByName("b2")
	eject := func(u *Upstream) {
		for range DefaultFailureThreshold {
			u.ReportFailure(clk.Now())
		}
	}
	eject(b0)
	eject(b1)
	// b2 is available: no panic, the ejected ones are left alone, even
	// when b2 was tried (the caller may try it again).
	if u, err := p.Pick("", nil); err != nil || u != b2 {
		t.Fatalf("picked %v, %v; want b2", u, err)
	}
	isB2 := func(u *Upstream) bool { return u == b2 }
	if u, err := p.Pick("", isB2); !errors.Is(err, ErrNoAvailable) {
		t.Fatalf("b2 tried: picked %v, %v; want ErrNoAvailable", u, err)
	}
	eject(b2)
	b2.recordCheck(false, 1, 1)
	got := map[string]int{}
	for range 10 {
		u, err := p.Pick("", nil)
		if err != nil {
			t.Fatal(err)
		}
		got[u.Name]++
	}
	if got["b0"] != 5 || got["b1"] != 5 {
		t.Fatalf("all ejected, b2 down: picks %v, want b0 and b1 in turn", got)
	}
	isB0 := func(u *Upstream) bool { return u == b0 }
	if u, err := p.Pick("", isB0); err != nil || u != b1 {
		t.Fatalf("b0 tried: picked %v, %v; want b1", u, err)
	}
	if _, err := p.Pick("", func(u *Upstream) bool { return u != b2 }); !errors.Is(err, ErrNoAvailable) {
		t.Fatalf("every ejected one tried, b2 down: %v", err)
	}

	// A standby in the chain of an ejected primary comes after it, and
	// in its place when the primary is down.
	bs := []config.Backend{
		{Name: "vllm-1", URL: "http://vllm-1.test:8000", Weight: 5},
		{Name: "vllm-2", URL: "http://vllm-2.test:8000", Weight: 0},
	}
	q := mustPool(t, PoolConfig{Backends: bs, Fallback: []config.Fallback{{Primary: "vllm-1", Fallback: []string{"vllm-2"}}}, Clock: clk})
	v1, v2 := q.ByName("vllm-1"), q.ByName("vllm-2")
	eject(v1)
	eject(v2)
	if u, err := q.Pick("", nil); err != nil || u != v1 {
		t.Fatalf("both ejected: picked %v, %v; want vllm-1", u, err)
	}
	if u, err := q.Pick("", func(u *Upstream) bool { return u == v1 }); err != nil || u != v2 {
		t.Fatalf("both ejected, vllm-1 tried: picked %v, %v; want vllm-2", u, err)
	}
	v1.recordCheck(false, 1, 1)
	if u, err := q.Pick("", nil); err != nil || u != v2 {
		t.Fatalf("vllm-1 down, vllm-2 ejected: picked %v, %v; want vllm-2", u, err)
	}
}

// TestReloadKeepsUnchangedBackends: a pool built to replace another (a
// reload) keeps the Upstream of each backend whose config is the same, with
// its requests in flight, its ejection and its TTFT average, so that the
// strategies and ejection do not start over; a changed backend, or one whose
// pool settings changed, starts afresh.
func TestReloadKeepsUnchangedBackends(t *testing.T) {
	clk := newFakeClock()
	hc := config.HealthCheck{FailureThreshold: 1, Cooldown: config.Duration(time.Minute)}
	bs := backends(3)
	old := mustPool(t, PoolConfig{Backends: bs, Strategy: LeastConnections, Clock: clk, HealthCheck: hc})
	a, b, c := old.Upstreams()[0], old.Upstreams()[1], old.Upstreams()[2]
	a.Acquire() // a stream open on a
	a.ObserveTTFT(300 * time.Millisecond)
	b.ReportFailure(clk.Now()) // b ejected
	if !b.Ejected(clk.Now()) {
		t.Fatal("b not ejected")
	}

	next := append([]config.Backend(nil), bs...)
	next[2].Headers = map[string]string{"Authorization": "Bearer new"} // c changed
	p := mustPool(t, PoolConfig{Backends: next, Strategy: LeastConnections, Clock: clk, HealthCheck: hc, Previous: old})
	na, nb, nc := p.Upstreams()[0], p.Upstreams()[1], p.Upstreams()[2]
	if na != a || nb != b || nc == c {
		t.Fatalf("kept a %v, b %v, c %v; want a and b kept, c new", na == a, nb == b, nc == c)
	}
	if na.InFlight() != 1 || !nb.Ejected(clk.Now()) {
		t.Fatalf("a in flight %d, b ejected %v", na.InFlight(), nb.Ejected(clk.Now()))
	}
	if ttft, ok := na.TTFT(); !ok || ttft != 300*time.Millisecond {
		t.Fatalf("a's TTFT %v %v", ttft, ok)
	}
	// least_connections sends the next request past a's open stream and
	// the ejected b.
	if u, err := p.Pick("", nil); err != nil || u != nc {
		t.Fatalf("picked %v, %v; want %s", u, err, nc.Name)
	}
	// The request that started before the reload ends on the same
	// Upstream, so the count comes back to 0 rather than -1 or 1.
	a.Release()
	if na.InFlight() != 0 {
		t.Fatalf("a in flight %d after its stream ended", na.InFlight())
	}

	// Other passive-ejection settings: every backend starts afresh.
	hc2 := hc
	hc2.Cooldown = config.Duration(2 * time.Minute)
	p2 := mustPool(t, PoolConfig{Backends: next, Strategy: LeastConnections, Clock: clk, HealthCheck: hc2, Previous: p})
	for i, u := range p2.Upstreams() {
		if u == p.Upstreams()[i] {
			t.Fatalf("backend %d kept across a change of cooldown", i)
		}
	}
}

// TestModelOnlyStandbysServe: a model that only weight 0 backends serve
// (listed by them, or unlisted and they alone serve every model) is served
// by no backend: Pick says ErrModelNotFound (404) whatever their health,
// as for a model nobody lists. It said ErrNoAvailable (503, "try again
// shortly") for ever while every backend was healthy.
func TestModelOnlyStandbysServe(t *testing.T) {
	p := mustPool(t, PoolConfig{
		Backends: []config.Backend{
			{Name: "main", URL: "http://main.test:8000", Weight: 1, Models: []string{"m"}},
			{Name: "spare", URL: "http://spare.test:8000", Weight: 0, Models: []string{"m", "x"}},
			{Name: "any", URL: "http://any.test:8000", Weight: 0},
		},
		Fallback: []config.Fallback{{Primary: "main", Fallback: []string{"spare", "any"}}},
	})
	for _, model := range []string{"x", "unlisted"} {
		if u, err := p.Pick(model, nil); !errors.Is(err, ErrModelNotFound) || p.HasModel(model) {
			t.Errorf("%s: picked %v, %v; want ErrModelNotFound", model, u, err)
		}
	}
	if u, err := p.Pick("m", nil); err != nil || u.Name != "main" {
		t.Fatalf("m: picked %v, %v", u, err)
	}
	if chain := p.FallbackFor("m", p.ByName("main")); len(chain) != 2 {
		t.Fatalf("main's chain for m: %v", chain)
	}
}

// TestRoundRobinRetryIsNoTurn: under round_robin a retry's pick (its first
// choice failed) does not advance the rotation, so the first choices still
// alternate: counted as a turn, the failing upstream became the least
// recently picked again and every request went to it first.
func TestRoundRobinRetryIsNoTurn(t *testing.T) {
	p := mustPool(t, PoolConfig{Backends: backends(2), Strategy: RoundRobin})
	first := map[string]int{}
	for range 10 {
		u, err := p.Pick("", nil)
		if err != nil {
			t.Fatal(err)
		}
		first[u.Name]++
		if u.Name == "b0" { // b0 fails every request: retry elsewhere
			if r, err := p.Pick("", func(t *Upstream) bool { return t == u }); err != nil || r.Name != "b1" {
				t.Fatalf("retry: %v, %v", r, err)
			}
		}
	}
	if first["b0"] != 5 || first["b1"] != 5 {
		t.Fatalf("first choices %v, want 5 each", first)
	}
}

// TestStandbyTakesItsPrimarysPlace: while a primary is down or ejected,
// the first of its fallback chain that can take requests takes its place
// beside the other backends, with its weight, rather than the others
// taking its share.
func TestStandbyTakesItsPrimarysPlace(t *testing.T) {
	for _, strategy := range []string{Weighted, RoundRobin, LeastConnections} {
		t.Run(strategy, func(t *testing.T) {
			clk := newFakeClock()
			bs := backends(3)
			bs[0].Weight, bs[1].Weight, bs[2].Weight = 1, 3, 0 // b2 stands by for b1
			p := mustPool(t, PoolConfig{Backends: bs, Strategy: strategy, Clock: clk,
				HealthCheck: config.HealthCheck{FailureThreshold: 1, Cooldown: config.Duration(time.Minute)},
				Fallback:    []config.Fallback{{Primary: "b1", Fallback: []string{"b2"}}}})
			p.ByName("b1").ReportFailure(clk.Now()) // ejected
			got := map[string]int{}
			for range 40 {
				u, err := p.Pick("", nil)
				if err != nil {
					t.Fatal(err)
				}
				got[u.Name]++
				if strategy == LeastConnections {
					u.Acquire()
				}
			}
			if got["b1"] != 0 || got["b2"] == 0 || got["b0"] == 0 {
				t.Fatalf("picks %v: want b1's place taken by b2 beside b0", got)
			}
			if strategy == Weighted && (got["b2"] != 30 || got["b0"] != 10) {
				t.Fatalf("picks %v: want b2 at b1's weight, 3 to b0's 1", got)
			}
		})
	}
}
