package ledger

import (
	"context"
	"math"
	"time"
)

// Reasons an Admitter gives for a rejection, in the order the limits are
// checked: the first limit that fails names the rejection.
const (
	ReasonGlobalRPS   = "global_rps"
	ReasonKeyRPS      = "key_rps"
	ReasonKeyRPM      = "key_rpm"
	ReasonConcurrency = "concurrency"
	ReasonTPM         = "tpm"
	ReasonQuota       = "quota"
)

// Defaults of AdmitRequest's durations.
const (
	// DefaultLeaseTTL is how long a concurrency lease lives when
	// AdmitRequest.LeaseTTL is zero: a gateway that dies holding it frees
	// the slot at the latest this long after admission.
	DefaultLeaseTTL = 10 * time.Minute
	// DefaultReservationTTL is how long a reservation is kept when the meter
	// never applies its request's event (a lost request).
	DefaultReservationTTL = 10 * time.Minute
	// tpmWindow is the sliding window of tokens_per_minute and
	// requests_per_minute.
	tpmWindow = time.Minute
)

// GlobalLimit is the fleet-wide request rate: RPS requests per second with
// bursts of Burst. RPS 0 means no limit; Burst 0 means RPS rounded up.
type GlobalLimit struct {
	RPS   float64
	Burst int
}

// KeyLimits are one key's limits; zero means no limit.
type KeyLimits struct {
	RPS           float64 // requests per second, GCRA with a burst of RPS rounded up
	RPM           int64   // requests in any sliding 60 s
	TPM           int64   // tokens in any sliding 60 s, reservations included
	MaxConcurrent int64   // leases held at once
}

// AdmitRequest asks to admit one request of one key.
type AdmitRequest struct {
	KeyID string
	// LeaseID names the request's concurrency lease and reservation. It must
	// be the request id the request's RequestCompleted event carries (the
	// meter releases the reservation by it) and unique among the key's
	// requests in flight: a second admission with the same id replaces the
	// first one's lease and reservation instead of adding to them.
	LeaseID string
	Global  GlobalLimit
	Limits  KeyLimits
	// Quota is the key's tokens per Period; 0 means no quota.
	Quota  int64
	Period Period
	// At is when the request arrived (zero: now). Its quota is that of the
	// Period containing At, the period its usage is counted in (the
	// event's timestamp, Entry.Time), even when the admission runs after
	// that period ended (a body read or a key look-up across midnight).
	At time.Time
	// Reserve is the tokens reserved until the meter applies the request's
	// usage: the prompt estimate plus max_tokens (or the default cap).
	Reserve int64
	// LeaseTTL bounds how long the concurrency lease is held when Release is
	// never called (default DefaultLeaseTTL).
	LeaseTTL time.Duration
}

// Decision is an Admitter's answer. The x-ratelimit figures describe the
// tightest request limit (RPM, else the key's RPS burst) and token limit
// (TPM, else the period quota); zero limits mean none applies.
type Decision struct {
	Allowed bool
	// Reason names the limit that rejected the request (Reason* constants).
	Reason string
	// RetryAfter is when a retry may succeed; zero when waiting would not
	// help (a never-resetting quota).
	RetryAfter time.Duration
	// HeldByReservations reports a refusal by the period quota that only
	// the key's outstanding reservations caused: the request fits in what
	// the period has left once the requests in flight finish and are
	// settled with their real counts, so the quota is not used up and
	// RetryAfter is a second, not the period's end.
	HeldByReservations bool

	LimitRequests, RemainingRequests int64
	ResetRequests                    time.Duration
	LimitTokens, RemainingTokens     int64
	ResetTokens                      time.Duration
}

// Admitter decides, in one step that is atomic across every process sharing
// its store, whether a request may start. An admitted request holds a
// concurrency lease until Release and a token reservation until the meter
// applies its event (Store.Apply with the same request id) or the reservation
// expires. A rejected request changes nothing: no lease, no reservation, no
// request counted against any rate. Implementations are safe for concurrent
// use.
//
// An Admit that returns an error admitted nothing: an implementation whose
// store may run a call it got no answer for (Redis) cancels that admission
// itself, so that once the store answers again the request holds no lease,
// no reservation and no place in the RPM window, and follows a Release that
// returns an error with the release again.
//
// Semantics shared by every implementation, checked in this order:
//   - global RPS: GCRA at Global.RPS with bursts of Global.Burst;
//   - key RPS: GCRA at Limits.RPS with bursts of ceil(Limits.RPS);
//   - key RPM: at most Limits.RPM admissions in any sliding 60 s (exact);
//   - concurrency: at most Limits.MaxConcurrent unexpired leases;
//   - TPM: tokens applied with an event time in the last 60 s, plus
//     outstanding reservations, plus Reserve, at most Limits.TPM;
//   - quota: tokens used in the key's Period containing At (UTC, as Apply
//     counts them), plus outstanding reservations, plus Reserve, at most
//     Quota.
//
// A request that alone is larger than a whole TPM or quota could never fit;
// so that such a key still works (a small quota with a large max_tokens cap),
// it is admitted when nothing else is outstanding and the window (TPM) or the
// period's usage (quota) is below the limit. The limit is then overshot by at
// most that one request.
type Admitter interface {
	Admit(ctx context.Context, req AdmitRequest) (Decision, error)
	// Release frees the concurrency lease leaseID of key keyID. Releasing a
	// lease that is gone (released or expired) does nothing.
	Release(ctx context.Context, keyID, leaseID string) error
}

// LeaseRenewer keeps a running request's hold on its key: its concurrency
// lease and its token reservation. A request that may outlive either TTL (a
// long stream) renews every lease TTL/2: its slot stays held while it runs,
// a crash still frees the slot within the lease TTL, and its reservation
// lasts at least a reservation TTL past the last renewal, so the meter has
// that long to settle it after the request ends. Both admitters implement
// it.
type LeaseRenewer interface {
	// Renew sets lease leaseID of key keyID to expire ttl from now, and the
	// reservation of the same request id to expire a reservation TTL from
	// now (never earlier than it already does). It reports whether either
	// was still held; one that expired or was released is not brought
	// back.
	Renew(ctx context.Context, keyID, leaseID string, ttl time.Duration) (bool, error)
}

// UsageReader reads a key's usage in a period; every Store is one.
type UsageReader interface {
	Usage(ctx context.Context, keyID string, p Period, at time.Time) (Totals, error)
}

// keyBurst is the burst of a key's RPS limit.
func keyBurst(rps float64) int64 { return max(int64(math.Ceil(rps)), 1) }

// Emission returns the global limit's rate as the cell rate algorithm
// takes it: the interval between two requests and the burst. g.RPS must be
// above 0.
func (g GlobalLimit) Emission() (time.Duration, int64) { return emission(g.RPS, globalBurst(g)) }

// globalBurst is the burst of the global limit.
func globalBurst(g GlobalLimit) int64 {
	if g.Burst > 0 {
		return int64(g.Burst)
	}
	return keyBurst(g.RPS)
}

// withDefaults fills req's zero durations and period.
func (req AdmitRequest) withDefaults() AdmitRequest {
	if req.LeaseTTL <= 0 {
		req.LeaseTTL = DefaultLeaseTTL
	}
	if req.Period == "" {
		req.Period = Monthly
	}
	if req.Reserve < 0 {
		req.Reserve = 0
	}
	return req
}

// fits reports whether reserve more tokens fit under limit, given used
// tokens and outstanding reservations (see the oversized request rule on
// Admitter).
func fits(used, outstanding, reserve, limit int64) bool {
	if reserve > limit {
		return outstanding == 0 && used < limit
	}
	return used+outstanding+reserve <= limit
}

// excess returns how many of the used tokens must leave a sliding window
// before reserve more fit under limit beside outstanding reservations (see
// fits): for a request larger than the whole limit, enough to bring the
// window below it. It is more than used when the window cannot free them on
// its own, the reservations having to settle first.
func excess(used, outstanding, reserve, limit int64) int64 {
	if reserve > limit {
		if outstanding > 0 {
			return used + 1
		}
		return used - limit + 1
	}
	return used + outstanding + reserve - limit
}
