package balancer

import (
	"testing"
	"time"
)

// TestLatencyPrefersFasterButNotExclusively: of two, the slower one wins
// no comparison; it gets only the exploration's share (1/exploreOdds, half
// of it to each), enough to keep its EWMA current. Drawn independently,
// the two choices would give it a quarter of the traffic, however slow.
func TestLatencyPrefersFasterButNotExclusively(t *testing.T) {
	us := ups(1, 1)
	us[0].ObserveTTFT(100 * time.Millisecond)
	us[1].ObserveTTFT(time.Second)
	p := &LatencyPicker{Rand: seeded(1)}
	var picks []*Upstream
	for range 10000 {
		picks = append(picks, p.Pick(us))
	}
	c := counts(picks)
	if c["b"] < 50 || c["b"] > 200 {
		t.Fatalf("counts = %v, want b ≈1%%", c)
	}
}

func TestLatencySlowestOfManyKeepsSomeTraffic(t *testing.T) {
	us := ups(1, 1, 1, 1)
	for i, u := range us {
		u.ObserveTTFT(time.Duration(i+1) * 100 * time.Millisecond)
	}
	p := &LatencyPicker{Rand: seeded(2)}
	var picks []*Upstream
	for range 16000 {
		picks = append(picks, p.Pick(us))
	}
	c := counts(picks)
	// Only the exploration reaches the slowest: 16000 / 50 / 4 = 80.
	if c["d"] < 30 || c["d"] > 160 {
		t.Errorf("slowest got %d of 16000, want ≈80", c["d"])
	}
	if !(c["a"] > c["b"] && c["b"] > c["c"] && c["c"] > c["d"]) {
		t.Errorf("shares not ordered by latency: %v", c)
	}
}

func TestLatencyComparesTheTwoDrawn(t *testing.T) {
	us := ups(1, 1, 1)
	us[0].ObserveTTFT(50 * time.Millisecond)
	us[1].ObserveTTFT(200 * time.Millisecond)
	us[2].ObserveTTFT(100 * time.Millisecond)
	// No exploration (1), then draws b (1) and, of the other two, the
	// second (1 → c): c wins although a is the global minimum.
	p := &LatencyPicker{Rand: &scripted{vals: []int{1, 1, 1}}}
	if got := p.Pick(us); got != us[2] {
		t.Fatalf("picked %s, want c", got.Name)
	}
}

// TestLatencyExplores: the exploration's pick is the candidate drawn,
// however slow.
func TestLatencyExplores(t *testing.T) {
	us := ups(1, 1, 1)
	us[0].ObserveTTFT(50 * time.Millisecond)
	us[1].ObserveTTFT(200 * time.Millisecond)
	us[2].ObserveTTFT(10 * time.Second)
	if got := (&LatencyPicker{Rand: &scripted{vals: []int{0, 2}}}).Pick(us); got != us[2] {
		t.Fatalf("picked %s, want c", got.Name)
	}
}

func TestLatencyInFlightRaisesCost(t *testing.T) {
	us := ups(1, 1)
	us[0].ObserveTTFT(100 * time.Millisecond)
	us[1].ObserveTTFT(150 * time.Millisecond)
	us[0].Acquire()
	p := &LatencyPicker{Rand: &scripted{vals: []int{1, 0, 0}}}
	if got := p.Pick(us); got != us[1] {
		t.Fatalf("picked %s, want b (a costs 2×100ms)", got.Name)
	}
}

func TestLatencyNewUpstreamGetsNeutralPrior(t *testing.T) {
	us := ups(1, 1, 1)
	us[0].ObserveTTFT(100 * time.Millisecond)
	us[1].ObserveTTFT(300 * time.Millisecond)
	// c has no samples: prior = 200ms, beating b, losing to a.
	if got := (&LatencyPicker{Rand: &scripted{vals: []int{1, 1, 1}}}).Pick(us); got != us[2] {
		t.Errorf("new vs slow: picked %s, want c", got.Name)
	}
	if got := (&LatencyPicker{Rand: &scripted{vals: []int{1, 2, 0}}}).Pick(us); got != us[0] {
		t.Errorf("new vs fast: picked %s, want a", got.Name)
	}
}

func TestObserveTTFTIsEWMA(t *testing.T) {
	u := ups(1)[0]
	if _, ok := u.TTFT(); ok {
		t.Fatal("TTFT before any sample")
	}
	u.ObserveTTFT(100 * time.Millisecond)
	u.ObserveTTFT(200 * time.Millisecond)
	got, _ := u.TTFT()
	if want := 130 * time.Millisecond; got < want-time.Microsecond || got > want+time.Microsecond {
		t.Fatalf("EWMA = %s, want %s", got, want)
	}
}
