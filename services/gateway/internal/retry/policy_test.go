package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

type fixedRand float64

func (f fixedRand) Float64() float64 { return float64(f) }

func mustNew(t *testing.T, cfg config.Retry, opts ...Option) *Policy {
	t.Helper()
	if err := Validate(cfg); err != nil {
		t.Fatal(err)
	}
	return NewPolicy(cfg, opts...)
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// timeoutOnly is a timeout that is not a net.Error (no Temporary), as the
// gateway's own transport reports a first-byte timeout.
type timeoutOnly struct{}

func (timeoutOnly) Error() string { return "timeout awaiting response headers" }
func (timeoutOnly) Timeout() bool { return true }

type notTimeout struct{}

func (notTimeout) Error() string { return "not a timeout" }
func (notTimeout) Timeout() bool { return false }

func TestShouldRetry(t *testing.T) {
	dialRefused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	all := config.Retry{Enabled: true, MaxRetries: 2}
	only5xx := config.Retry{Enabled: true, MaxRetries: 2, On: []string{"5xx"}}
	tests := []struct {
		name    string
		cfg     config.Retry
		attempt int
		status  int
		err     error
		want    bool
	}{
		{"disabled", config.Retry{MaxRetries: 2}, 0, 503, nil, false},
		{"503", all, 0, 503, nil, true},
		{"500", all, 0, 500, nil, true},
		{"429", all, 0, 429, nil, true},
		{"400 never", all, 0, 400, nil, false},
		{"404 never", all, 0, 404, nil, false},
		{"200 never", all, 0, 200, nil, false},
		{"no status no error", all, 0, 0, nil, false},
		{"last allowed attempt", all, 1, 502, nil, true},
		{"retries exhausted", all, 2, 502, nil, false},
		{"negative attempt", all, -1, 502, nil, false},
		{"dial refused", all, 0, 0, dialRefused, true},
		{"wrapped refused", all, 0, 0, fmt.Errorf("dial backend a: %w", syscall.ECONNREFUSED), true},
		{"reset", all, 0, 0, reset, true},
		{"dns", all, 0, 0, &net.DNSError{Err: "no such host", Name: "x"}, true},
		{"unexpected eof", all, 0, 0, io.ErrUnexpectedEOF, true},
		{"server closed idle connection", all, 0, 0, errors.New("http: server closed idle connection"), true},
		{"deadline", all, 0, 0, context.DeadlineExceeded, true},
		{"os deadline", all, 0, 0, fmt.Errorf("read: %w", os.ErrDeadlineExceeded), true},
		{"net timeout", all, 0, 0, timeoutErr{}, true},
		{"timeout without Temporary", all, 0, 0, timeoutOnly{}, true},
		{"wrapped timeout without Temporary", all, 0, 0, fmt.Errorf("backend a: %w", timeoutOnly{}), true},
		{"Timeout false", all, 0, 0, notTimeout{}, false},
		{"5xx only: timeout without Temporary", only5xx, 0, 0, timeoutOnly{}, false},
		{"client cancelled", all, 0, 0, context.Canceled, false},
		{"client cancelled wrapped in dial", all, 0, 0, &net.OpError{Op: "dial", Err: context.Canceled}, false},
		{"client cancelled with 503", all, 0, 503, fmt.Errorf("copy: %w", context.Canceled), false},
		{"unknown error", all, 0, 0, errors.New("boom"), false},
		{"5xx only: 503", only5xx, 0, 503, nil, true},
		{"5xx only: 429", only5xx, 0, 429, nil, false},
		{"5xx only: refused", only5xx, 0, 0, dialRefused, false},
		{"5xx only: timeout", only5xx, 0, 0, context.DeadlineExceeded, false},
		{"timeout only", config.Retry{Enabled: true, MaxRetries: 1, On: []string{"timeout"}}, 0, 0, timeoutErr{}, true},
		{"max retries 0: none", config.Retry{Enabled: true}, 0, 503, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustNew(t, tt.cfg)
			if got := p.ShouldRetry(tt.attempt, tt.status, tt.err); got != tt.want {
				t.Errorf("ShouldRetry(%d, %d, %v) = %v, want %v", tt.attempt, tt.status, tt.err, got, tt.want)
			}
		})
	}
}

func TestValidateRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.Retry
	}{
		{"unknown on", config.Retry{On: []string{"connect", "4xx"}}},
		{"negative retries", config.Retry{MaxRetries: -1}},
		{"max below initial", config.Retry{InitialWait: config.Duration(time.Second), MaxWait: config.Duration(time.Millisecond)}},
		{"multiplier below one", config.Retry{Multiplier: 0.5}},
		{"empty on", config.Retry{On: []string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Validate(tt.cfg); err == nil {
				t.Fatal("want error")
			}
			// A policy built anyway falls back to sane values.
			p := NewPolicy(tt.cfg, WithRand(fixedRand(0.5)))
			if p.MaxRetries() < 0 || p.Backoff(0) <= 0 || p.Backoff(5) < p.Backoff(0) {
				t.Fatalf("unsane policy from %+v", tt.cfg)
			}
		})
	}
}

func TestBackoffSchedule(t *testing.T) {
	cfg := config.Retry{
		Enabled:     true,
		InitialWait: config.Duration(100 * time.Millisecond),
		MaxWait:     config.Duration(time.Second),
		Multiplier:  2,
	}
	// rand 0.5 sits in the middle of the jitter range: the bare schedule.
	p := mustNew(t, cfg, WithRand(fixedRand(0.5)))
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Backoff(i); got != w*time.Millisecond {
			t.Errorf("Backoff(%d) = %s, want %s", i, got, w*time.Millisecond)
		}
	}
	if got := p.Backoff(1000); got != time.Second {
		t.Errorf("Backoff(1000) = %s, want capped 1s", got)
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	cfg := config.Retry{Enabled: true, InitialWait: config.Duration(100 * time.Millisecond), MaxWait: config.Duration(2 * time.Second), Multiplier: 3}
	lo := mustNew(t, cfg, WithRand(fixedRand(0)))
	hi := mustNew(t, cfg, WithRand(fixedRand(0.999999999)))
	def := mustNew(t, cfg)
	for attempt := range 8 {
		base := min(100*time.Millisecond*time.Duration(pow(3, attempt)), 2*time.Second)
		min := time.Duration(float64(base) * (1 - Jitter))
		max := time.Duration(float64(base) * (1 + Jitter))
		if got := lo.Backoff(attempt); got != min {
			t.Errorf("attempt %d: low jitter = %s, want %s", attempt, got, min)
		}
		if got := hi.Backoff(attempt); got < max-time.Microsecond || got > max {
			t.Errorf("attempt %d: high jitter = %s, want ≈%s", attempt, got, max)
		}
		for range 50 {
			if got := def.Backoff(attempt); got < min || got > max {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, got, min, max)
			}
		}
	}
}

func pow(b, e int) int {
	r := 1
	for range e {
		r *= b
	}
	return r
}
