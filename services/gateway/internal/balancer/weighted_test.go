package balancer

import (
	"math"
	"strings"
	"testing"
)

func TestWeightedNginxInterleaving(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		n       int
		want    string
	}{
		{"5/1/1", []int{5, 1, 1}, 14, "aabacaa" + "aabacaa"},
		{"5/3/2", []int{5, 3, 2}, 10, "abcaabacba"},
		{"equal", []int{1, 1, 1}, 6, "abcabc"},
		{"zero weight counts as one", []int{0, 1}, 4, "abab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			us := ups(tt.weights...)
			p := NewWeightedPicker()
			var b strings.Builder
			for range tt.n {
				b.WriteString(p.Pick(us).Name)
			}
			if b.String() != tt.want {
				t.Fatalf("picks = %s, want %s", b.String(), tt.want)
			}
		})
	}
}

func TestWeightedShares(t *testing.T) {
	us := ups(5, 3, 2)
	p := NewWeightedPicker()
	const n = 10000
	var picks []*Upstream
	for range n {
		picks = append(picks, p.Pick(us))
	}
	c := counts(picks)
	for _, u := range us {
		want := float64(u.Weight) / 10
		got := float64(c[u.Name]) / n
		if math.Abs(got-want) > 0.02 {
			t.Errorf("%s share = %.3f, want %.2f±0.02", u.Name, got, want)
		}
	}
}

func TestWeightedSkipsUnavailable(t *testing.T) {
	us := ups(5, 3, 2)
	p := NewWeightedPicker()
	var picks []*Upstream
	for range 500 {
		picks = append(picks, p.Pick([]*Upstream{us[1], us[2]}))
	}
	c := counts(picks)
	if c["a"] != 0 || c["b"] != 300 || c["c"] != 200 {
		t.Fatalf("counts = %v, want b=300 c=200", c)
	}
}
