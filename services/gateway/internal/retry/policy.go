// Package retry decides whether a failed try at a backend is tried again
// and how long to wait first. The proxy retries only before the first byte
// has gone to the client; this package knows nothing of that and only
// classifies outcomes and computes waits.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/llmproxy/llmproxy/pkg/config"
)

// Kinds of failure named in routing.retry.on.
const (
	OnConnect = "connect" // refused, reset, dial and DNS errors
	On429     = "429"     // backend rate limited
	On5xx     = "5xx"     // backend error status
	OnTimeout = "timeout" // deadline exceeded, i/o timeouts
)

// Defaults of config.Retry: DefaultMaxRetries for a negative max_retries
// (config.Load fills it in when the key is absent; 0 written means no
// retries), the others for zero values.
const (
	DefaultMaxRetries  = 2
	DefaultInitialWait = 100 * time.Millisecond
	DefaultMaxWait     = 2 * time.Second
	DefaultMultiplier  = 2.0
	// Jitter is the randomization factor: a wait is spread uniformly over
	// ±20% of the exponential interval so retries from many requests do
	// not arrive at a recovering backend together.
	Jitter = 0.2
	// maxAttempt bounds the interval computation; the interval reached
	// MaxWait long before.
	maxAttempt = 64
)

// Rand is the jitter source; *math/rand.Rand satisfies it.
type Rand interface {
	Float64() float64
}

type globalRand struct{}

func (globalRand) Float64() float64 { return rand.Float64() }

// Policy is the retry policy of routing.retry. It is immutable and safe
// for concurrent use (given a Rand that is).
type Policy struct {
	enabled    bool
	maxRetries int
	initial    time.Duration
	maxWait    time.Duration
	multiplier float64
	on         map[string]bool
	rnd        Rand
}

// Option configures a Policy.
type Option func(*Policy)

// WithRand sets the jitter source (default math/rand/v2's global source).
func WithRand(r Rand) Option { return func(p *Policy) { p.rnd = r } }

// NewPolicy builds a Policy from cfg (routing.retry). MaxRetries is taken
// as given, 0 meaning no retries (config.Load fills in the default when
// the key is absent); a nil On means every kind, an empty one none. Zero
// waits and multiplier take the defaults; so do values Validate rejects,
// and unknown entries in on are ignored, so a policy built from an
// unchecked config is still sane.
func NewPolicy(cfg config.Retry, opts ...Option) *Policy {
	p := &Policy{
		enabled:    cfg.Enabled,
		maxRetries: cfg.MaxRetries,
		initial:    cfg.InitialWait.D(),
		maxWait:    cfg.MaxWait.D(),
		multiplier: cfg.Multiplier,
		on:         make(map[string]bool, 4),
		rnd:        globalRand{},
	}
	if p.maxRetries < 0 {
		p.maxRetries = DefaultMaxRetries
	}
	if p.initial <= 0 {
		p.initial = DefaultInitialWait
	}
	if p.maxWait <= 0 {
		p.maxWait = DefaultMaxWait
	}
	p.maxWait = max(p.maxWait, p.initial)
	if p.multiplier < 1 {
		p.multiplier = DefaultMultiplier
	}
	on := cfg.On
	if on == nil {
		on = kinds
	}
	for _, k := range on {
		p.on[k] = true
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

var kinds = []string{OnConnect, On429, On5xx, OnTimeout}

// Validate checks cfg (routing.retry) and names the key at fault.
func Validate(cfg config.Retry) error {
	if cfg.MaxRetries < 0 {
		return fmt.Errorf("routing.retry.max_retries: %d is negative", cfg.MaxRetries)
	}
	if cfg.InitialWait < 0 {
		return errors.New("routing.retry.initial_wait: must not be negative")
	}
	if cfg.MaxWait < 0 {
		return errors.New("routing.retry.max_wait: must not be negative")
	}
	if cfg.InitialWait > 0 && cfg.MaxWait > 0 && cfg.MaxWait < cfg.InitialWait {
		return fmt.Errorf("routing.retry.max_wait: %s is less than initial_wait %s", cfg.MaxWait.D(), cfg.InitialWait.D())
	}
	if cfg.Multiplier != 0 && cfg.Multiplier < 1 {
		return fmt.Errorf("routing.retry.multiplier: %g is less than 1", cfg.Multiplier)
	}
	if cfg.On != nil && len(cfg.On) == 0 {
		return errors.New("routing.retry.on: an empty list retries nothing; leave it out to retry on all four kinds, or write enabled: false")
	}
	for i, k := range cfg.On {
		if !slices.Contains(kinds, k) {
			return fmt.Errorf("routing.retry.on[%d]: unknown %q (want connect, 429, 5xx or timeout)", i, k)
		}
	}
	return nil
}

// Enabled reports whether retries are on.
func (p *Policy) Enabled() bool { return p.enabled }

// MaxRetries returns how many times a request may be retried.
func (p *Policy) MaxRetries() int { return p.maxRetries }

// ShouldRetry reports whether a failed try is to be retried. attempt counts
// the tries before this one (0 for the first try, so it is also the number
// of retries made so far); the try ended with status (0 when there was no
// response) or err. At most MaxRetries retries follow the first try.
// A try whose context was cancelled — the client left — is never retried,
// nor is any other error or status not listed in on.
func (p *Policy) ShouldRetry(attempt int, status int, err error) bool {
	if !p.enabled || attempt < 0 || attempt >= p.maxRetries {
		return false
	}
	if err != nil {
		k := Classify(err)
		return k != "" && p.on[k]
	}
	switch {
	case status == 429:
		return p.on[On429]
	case status >= 500 && status <= 599:
		return p.on[On5xx]
	}
	return false
}

// Classify names the kind of a transport error: OnConnect, OnTimeout, or
// "" for errors that are not retried (a cancelled context, anything
// unknown). A dial that timed out is a connect failure: no byte reached
// the backend.
func Classify(err error) string {
	if err == nil || errors.Is(err, context.Canceled) {
		return ""
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return OnConnect
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return OnConnect
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return OnConnect
	}
	// A request the backend stopped taking before it had all of it (the
	// transport's write timeout) was never acted on: a connect failure,
	// though it is a timeout, since a retry costs no duplicate work.
	var us interface{ Unsent() bool }
	if errors.As(err, &us) && us.Unsent() {
		return OnConnect
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return OnTimeout
	}
	// Any error that says it is a timeout, not only a net.Error: the
	// gateway's own transport reports a first-byte timeout with an error
	// that has Timeout and no Temporary.
	var te interface{ Timeout() bool }
	if errors.As(err, &te) && te.Timeout() {
		return OnTimeout
	}
	// A kept-alive connection the backend closed before answering (as
	// llama.cpp's server does after a stream) reads as EOF.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return OnConnect
	}
	// net/http's unexported errServerClosedIdle: the backend closed a
	// kept-alive connection just as a request was sent on it, before it
	// read a byte of that request. Matched by its text.
	if strings.Contains(err.Error(), errServerClosedIdle) {
		return OnConnect
	}
	return ""
}

const errServerClosedIdle = "http: server closed idle connection"

// Backoff returns the wait before the retry that follows try attempt
// (counted as in ShouldRetry, from 0): initial_wait × multiplier^attempt,
// capped at max_wait, spread by ±Jitter. The schedule is backoff/v4's
// ExponentialBackOff; the jitter is drawn here from the policy's Rand
// because the library draws from the global source, which tests cannot
// fix.
func (p *Policy) Backoff(attempt int) time.Duration {
	attempt = min(max(attempt, 0), maxAttempt)
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.initial),
		backoff.WithMaxInterval(p.maxWait),
		backoff.WithMultiplier(p.multiplier),
		backoff.WithRandomizationFactor(0),
		backoff.WithMaxElapsedTime(0),
	)
	var base time.Duration
	for range attempt + 1 {
		base = b.NextBackOff()
	}
	delta := Jitter * float64(base)
	return time.Duration(float64(base) - delta + p.rnd.Float64()*2*delta)
}
