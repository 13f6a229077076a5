package balancer

import (
	"testing"
	"time"
)

func TestLeastLoad(t *testing.T) {
	clk := newFakeClock()
	fresh := clk.Now()
	stale := fresh.Add(-time.Minute)
	type scrape struct {
		waiting, cache float64
		at             time.Time
		none           bool
	}
	tests := []struct {
		name     string
		scrapes  []scrape
		inflight []int64 // now
		atScrape []int64
		want     string
	}{
		{"fewest waiting", []scrape{{5, 0.1, fresh, false}, {1, 0.9, fresh, false}, {3, 0.1, fresh, false}}, nil, nil, "b"},
		{"cache breaks waiting tie", []scrape{{2, 0.8, fresh, false}, {2, 0.3, fresh, false}}, nil, nil, "b"},
		{"sent since scrape counts as waiting", []scrape{{0, 0, fresh, false}, {2, 0, fresh, false}}, []int64{5, 0}, []int64{0, 0}, "b"},
		{"in flight at scrape is already in the queue", []scrape{{1, 0, fresh, false}, {2, 0, fresh, false}}, []int64{4, 0}, []int64{4, 0}, "a"},
		{"stale scrape falls back to least connections", []scrape{{0, 0, stale, false}, {9, 0, fresh, false}}, []int64{3, 1}, []int64{0, 0}, "b"},
		{"missing scrape falls back to least connections", []scrape{{0, 0, fresh, false}, {0, 0, fresh, true}}, []int64{2, 0}, []int64{2, 0}, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			us := ups(make([]int, len(tt.scrapes))...)
			for i, s := range tt.scrapes {
				var n, at int64
				if tt.inflight != nil {
					n, at = tt.inflight[i], tt.atScrape[i]
				}
				for range n {
					us[i].Acquire()
				}
				if !s.none {
					us[i].SetLoad(Load{Waiting: s.waiting, GPUCache: s.cache, At: s.at, InFlightAtScrape: at})
				}
			}
			p := &LeastLoadPicker{Rand: seeded(1), Clock: clk, MaxAge: 30 * time.Second}
			if got := p.Pick(us); got.Name != tt.want {
				t.Fatalf("picked %s, want %s", got.Name, tt.want)
			}
		})
	}
}

func TestLeastLoadStalenessFollowsClock(t *testing.T) {
	clk := newFakeClock()
	us := ups(1, 1)
	us[0].SetLoad(Load{Waiting: 0, At: clk.Now()})
	us[1].SetLoad(Load{Waiting: 10, At: clk.Now()})
	us[0].Acquire()
	us[0].Acquire()
	p := &LeastLoadPicker{Rand: seeded(1), Clock: clk, MaxAge: 30 * time.Second}
	us[0].SetLoad(Load{Waiting: 0, At: clk.Now(), InFlightAtScrape: 2})
	if got := p.Pick(us); got != us[0] {
		t.Fatalf("fresh: picked %s, want a", got.Name)
	}
	clk.Advance(31 * time.Second)
	if got := p.Pick(us); got != us[1] {
		t.Fatalf("stale: picked %s, want b (fewer in flight)", got.Name)
	}
}
