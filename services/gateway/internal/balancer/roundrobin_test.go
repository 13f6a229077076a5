package balancer

import (
	"strings"
	"testing"
)

func TestRoundRobinCycles(t *testing.T) {
	us := ups(1, 1, 1)
	p := &RoundRobinPicker{}
	var got []string
	for range 7 {
		got = append(got, p.Pick(us).Name)
	}
	if s := strings.Join(got, ""); s != "abcabca" {
		t.Fatalf("picks = %s, want abcabca", s)
	}
}

func TestRoundRobinSpreadsOverChangingSet(t *testing.T) {
	us := ups(1, 1, 1)
	p := &RoundRobinPicker{}
	var picks []*Upstream
	for range 100 {
		picks = append(picks, p.Pick(us[1:]))
	}
	c := counts(picks)
	if c["b"] != 50 || c["c"] != 50 {
		t.Fatalf("counts = %v, want 50/50 over b and c", c)
	}
}

// TestRoundRobinTurnsPerCandidateSet: the requests of two models, each
// served by two upstreams, take turns; each model's requests still go
// round its own upstreams. With one counter over every pick, a's and d's
// turns always fell to the same model and b and c got nothing.
func TestRoundRobinTurnsPerCandidateSet(t *testing.T) {
	us := ups(1, 1, 1, 1)
	m1, m2 := us[:2], us[2:]
	p := &RoundRobinPicker{}
	var picks []*Upstream
	for range 10 {
		picks = append(picks, p.Pick(m1), p.Pick(m2))
	}
	c := counts(picks)
	for _, name := range []string{"a", "b", "c", "d"} {
		if c[name] != 5 {
			t.Fatalf("counts = %v, want 5 each", c)
		}
	}
}
