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
