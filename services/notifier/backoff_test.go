package notifier

import (
	"net/http"
	"testing"
	"time"
)

// fixedRand returns a fixed fraction of n, for deterministic jitter.
type fixedRand struct{ num, den int64 }

func (r fixedRand) Int64N(n int64) int64 {
	v := n * r.num / r.den
	if v >= n {
		v = n - 1
	}
	return v
}

func TestBackoff(t *testing.T) {
	top := fixedRand{1, 1} // n-1: the ceiling itself (Int64N(ceiling+1))
	low := fixedRand{0, 1}
	half := fixedRand{1, 2}
	tests := []struct {
		name      string
		attempt   int
		base, max time.Duration
		rnd       Rand
		want      time.Duration
	}{
		{"first attempt ceiling is base", 1, time.Second, 5 * time.Minute, top, time.Second},
		{"second attempt doubles", 2, time.Second, 5 * time.Minute, top, 2 * time.Second},
		{"fifth attempt", 5, time.Second, 5 * time.Minute, top, 16 * time.Second},
		{"capped at max", 12, time.Second, 5 * time.Minute, top, 5 * time.Minute},
		{"huge attempt does not overflow", 1000, time.Second, 5 * time.Minute, top, 5 * time.Minute},
		{"full jitter reaches zero", 4, time.Second, 5 * time.Minute, low, 0},
		{"full jitter midpoint", 3, time.Second, 5 * time.Minute, half, 2 * time.Second},
		{"attempt below one is one", 0, time.Second, time.Minute, top, time.Second},
		{"zero base disables", 3, 0, time.Minute, top, 0},
		{"short test schedule", 3, 10 * time.Millisecond, 40 * time.Millisecond, top, 40 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Backoff(tt.attempt, tt.base, tt.max, tt.rnd)
			if got != tt.want {
				t.Errorf("Backoff(%d, %s, %s) = %s, want %s", tt.attempt, tt.base, tt.max, got, tt.want)
			}
		})
	}
}

func TestBackoffWithinBounds(t *testing.T) {
	for attempt := 1; attempt <= 20; attempt++ {
		for range 50 {
			d := Backoff(attempt, time.Second, 5*time.Minute, globalRand{})
			if d < 0 || d > 5*time.Minute {
				t.Fatalf("attempt %d: %s out of [0, 5m]", attempt, d)
			}
		}
	}
}

func TestRetryDelay(t *testing.T) {
	tests := []struct {
		name           string
		backoff, after time.Duration
		hasAfter       bool
		want           time.Duration
	}{
		{"retry-after shorter than the backoff wins", 3 * time.Minute, time.Second, true, time.Second},
		{"retry-after longer than the backoff wins", time.Second, 30 * time.Second, true, 30 * time.Second},
		{"no retry-after", 2 * time.Second, 0, false, 2 * time.Second},
		{"retry-after zero is floored", 2 * time.Minute, 0, true, time.Second},
		{"retry-after capped", time.Second, 48 * time.Hour, true, maxRetryAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retryDelay(tt.backoff, tt.after, tt.hasAfter, time.Second); got != tt.want {
				t.Errorf("retryDelay(%s, %s, %v) = %s, want %s", tt.backoff, tt.after, tt.hasAfter, got, tt.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 14, 10, 30, 0, 0, time.UTC)
	tests := []struct {
		name   string
		value  string
		want   time.Duration
		wantOK bool
	}{
		{"empty", "", 0, false},
		{"seconds", "120", 2 * time.Minute, true},
		{"zero", "0", 0, true},
		{"spaces", " 7 ", 7 * time.Second, true},
		{"negative", "-5", 0, false},
		{"garbage", "soon", 0, false},
		{"huge seconds capped", "99999999999", maxRetryAfter, true},
		{"http date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"http date in the past", now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseRetryAfter(tt.value, now)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.value, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		status int
		want   class
	}{
		{0, classRetry}, {200, classSuccess}, {204, classSuccess}, {299, classSuccess},
		{301, classPermanent}, {400, classPermanent}, {401, classPermanent}, {404, classPermanent},
		{408, classRetry}, {409, classPermanent}, {429, classRetry},
		{500, classRetry}, {502, classRetry}, {503, classRetry}, {504, classRetry},
	}
	for _, tt := range tests {
		if got := classify(tt.status); got != tt.want {
			t.Errorf("classify(%d) = %d, want %d", tt.status, got, tt.want)
		}
	}
}
