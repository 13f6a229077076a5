package gateway

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// defaultMaxTokensCap is reserved for a request that sets no max_tokens
// when auth.defaults.max_tokens_cap is unset.
const defaultMaxTokensCap = 4096

// admission is what an admitted request holds: a concurrency lease to
// release and tokens reserved until the meter settles them.
type admission struct {
	keyID    string
	lease    bool
	reserved int64

	// renew keeps the lease and the reservation while the request runs;
	// ended (under mu) stops it from being re-armed once the request is
	// over.
	mu    sync.Mutex
	ended bool
	renew *time.Timer
}

// admit asks the ledger, in one round trip, whether x may start. It returns
// nil when admitted (or when no limit applies).
func (g *Gateway) admit(ctx context.Context, x *exchange) *apierr.Error {
	if g.admitter == nil {
		return nil
	}
	cfg := x.rt.cfg
	if !cfg.RateLimitEnabled() && (x.key == nil || x.key.Quota <= 0) {
		return nil
	}
	// At: the quota checked is that of the period the event's timestamp
	// counts the request in, however long reading it took.
	req := ledger.AdmitRequest{KeyID: events.AnonymousKeyID, LeaseID: x.requestID, LeaseTTL: cfg.RateLimit.LeaseTTL.D(), At: x.start}
	if cfg.RateLimitEnabled() && cfg.RateLimit.Global.IsEnabled() {
		req.Global = ledger.GlobalLimit{RPS: cfg.RateLimit.Global.RequestsPerSecond, Burst: cfg.RateLimit.Global.BurstSize}
	}
	if k := x.key; k != nil {
		req.KeyID = k.ID
		if cfg.RateLimitEnabled() && k.Limits.IsEnabled() {
			req.Limits = ledger.KeyLimits{
				RPS: k.Limits.RequestsPerSecond, RPM: k.Limits.RequestsPerMinute,
				TPM: k.Limits.TokensPerMinute, MaxConcurrent: k.Limits.MaxConcurrent,
			}
		}
		req.Quota = k.Quota
		if p, err := ledger.ParsePeriod(k.Period); err == nil {
			req.Period = p
		}
	}
	if req.Global.RPS <= 0 && req.Limits == (ledger.KeyLimits{}) && req.Quota <= 0 {
		return nil
	}
	if (req.Limits.TPM > 0 || req.Quota > 0) && x.body != nil {
		req.Reserve = reservation(x.path, x.info, cfg.Auth.Defaults.MaxTokensCap, cfg.Auth.Defaults.ImageTokens)
	}
	d, err := g.admitter.Admit(ctx, req)
	if err != nil && ctx.Err() != nil && !cutByServer(ctx) {
		// The client left while the admission waited on a ledger that did
		// not answer: the request ends as the client's leaving, not as a
		// refusal no one received (the admitter cancels it all the same).
		return &apierr.Error{Status: 499, Type: "invalid_request_error", Code: "client_closed_request",
			Message: "the client left while the request waited for admission"}
	}
	if err != nil {
		// The admitter cancels a failed admission itself: it holds nothing
		// once the ledger answers again, even if it ran after all.
		g.logFailure(slog.LevelError, "admission failed", "request_id", x.requestID, "key_id", req.KeyID, "err", err)
		return g.reject("ledger_unavailable", apierr.Unavailable("rate_limiter_unavailable", "the rate limiter is unavailable; try again shortly"))
	}
	if !d.Allowed {
		e := rejection(d)
		for k, v := range rateLimitHeaders(refusedBy(req, d)) {
			if e.Header == nil {
				e.Header = http.Header{}
			}
			e.Header[k] = v
		}
		return g.reject(d.Reason, e)
	}
	x.adm = &admission{keyID: req.KeyID, lease: req.Limits.MaxConcurrent > 0, reserved: req.Reserve}
	// The ledger holds a reservation only where a token limit reads it.
	if x.adm.lease || (req.Reserve > 0 && (req.Limits.TPM > 0 || req.Quota > 0)) {
		g.keepHold(x, req.LeaseTTL)
	}
	return nil
}

// maxReservation bounds what one request reserves. No engine serves a
// context anywhere near it, so a larger max_tokens only says "no limit";
// the bound keeps every sum of reservations in the ledger far from
// overflowing (and exact in Redis's Lua numbers, which are doubles).
const maxReservation = 1 << 30

// reservation is the tokens a request may use: its prompt estimate (with
// imageTokens for each image) plus its completion limit (or the configured
// cap), at most maxReservation.
func reservation(path string, info usage.RequestInfo, capTokens, imageTokens int64) int64 {
	// A reservation is settled with the real count later, so the prompt is
	// bounded cheaply from its length rather than tokenized on the hot
	// path: tokens average about four bytes of text, and two bytes per
	// token keeps the bound above the real count for nearly any text.
	// A prompt given as token ids counts one token per id.
	// An image's tokens depend on the model and the image's size: the
	// configured allowance stands for each.
	images := int64(0)
	if info.Images > 0 && imageTokens > 0 {
		images = maxReservation
		if info.Images < maxReservation/imageTokens {
			images = info.Images * imageTokens
		}
	}
	prompt := min(int64(len(info.Prompt))/2+3*int64(info.Messages)+3+min(info.PromptTokenIDs, maxReservation)+images, maxReservation)
	switch path {
	case "/v1/embeddings", "/api/embed":
		return prompt
	case "/api/show":
		return 0 // a model's details: nothing is generated
	}
	if capTokens <= 0 {
		capTokens = defaultMaxTokensCap
	}
	limit := info.CompletionCap(path)
	if limit <= 0 {
		limit = capTokens
	} else if info.CapsFolded {
		// An engine that matches names exactly sees no cap.
		limit = max(limit, capTokens)
	}
	// n and best_of ask for that many completions of each prompt, each up
	// to the limit. Saturate: a max_tokens or n near the int64 maximum
	// must not wrap.
	if c := info.Completions(path); limit >= (maxReservation-prompt)/c {
		return maxReservation
	} else {
		limit *= c
	}
	return prompt + limit
}

// keepHold renews x's lease and reservation while the request runs, so a
// long stream keeps its slot and its tokens, a dead gateway's slot frees
// within ttl, and the reservation outlives the request by at least half a
// reservation TTL (the meter's time to settle it).
func (g *Gateway) keepHold(x *exchange, ttl time.Duration) {
	renewer, ok := g.admitter.(ledger.LeaseRenewer)
	if !ok {
		return
	}
	if ttl <= 0 {
		ttl = ledger.DefaultLeaseTTL
	}
	every := min(ttl, ledger.DefaultReservationTTL) / 2
	a := x.adm
	renew := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		held, err := renewer.Renew(ctx, a.keyID, x.requestID, ttl)
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.ended {
			return
		}
		if err != nil || !held {
			g.logFailure(slog.LevelWarn, "lease and reservation not renewed", "request_id", x.requestID, "held", held, "err", err)
		}
		if err != nil || held {
			a.renew.Reset(every)
		}
	}
	a.mu.Lock()
	a.renew = time.AfterFunc(every, renew)
	a.mu.Unlock()
}

// release ends x's hold on its key: the renewals stop and the concurrency
// lease is freed; tokens stay reserved until the meter applies x's event.
func (g *Gateway) release(x *exchange) {
	a := x.adm
	if a == nil {
		return
	}
	a.mu.Lock()
	a.ended = true
	if a.renew != nil {
		a.renew.Stop()
	}
	a.mu.Unlock()
	if !a.lease {
		return
	}
	a.lease = false
	keyID, id := a.keyID, x.requestID
	if _, local := g.admitter.(*ledger.MemoryAdmitter); local {
		g.releaseLease(keyID, id)
		return
	}
	// The reply's last bytes wait for the release (so that a client's
	// next request finds its slot free), but no longer than releaseWait:
	// a Redis that is down or frozen would hold every reply of a key with
	// max_concurrent for seconds (the call's own bound), and the replies
	// queued behind it in the same pipeline longer still. Past the wait
	// the release goes on in the background.
	done := make(chan struct{})
	go func() {
		g.releaseLease(keyID, id)
		close(done)
	}()
	t := time.NewTimer(releaseWait)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
}

// releaseWait bounds how long the end of a reply waits for its lease's
// release: Redis answers in well under a millisecond when it is well.
const releaseWait = 100 * time.Millisecond

// releaseLease frees the lease of request id. The Redis admitter sends a
// failed release again until Redis answers; the lease expires on its own if
// it never does.
func (g *Gateway) releaseLease(keyID, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.admitter.Release(ctx, keyID, id); err != nil {
		g.logFailure(slog.LevelWarn, "lease not released; retried in the background", "request_id", id, "err", err)
	}
}

func rejection(d ledger.Decision) *apierr.Error {
	retry := int(math.Ceil(d.RetryAfter.Seconds()))
	switch d.Reason {
	case ledger.ReasonQuota:
		if d.HeldByReservations {
			// The quota has room for the request once the key's
			// reservations are settled: a rate limit, not an exhausted
			// quota. They may be of requests that have finished, whose
			// usage no meter has recorded yet (a meter that is down).
			return apierr.RateLimited("rate_limit_exceeded", "this API key's token quota is held by the reservations of its recent requests (in flight, or finished and their usage not yet recorded); retry after "+strconv.Itoa(retry)+"s", retry)
		}
		// The refusal does not say which: the quota may have nothing
		// left, or less than the request reserves.
		msg := "this API key's token quota is used up, or has less left than this request reserves (its prompt's tokens plus max_tokens, or the gateway's cap when max_tokens is unset)"
		if retry > 0 {
			msg += "; it resets in " + (time.Duration(retry) * time.Second).String()
		}
		return apierr.QuotaExceeded(msg, retry)
	case ledger.ReasonGlobalRPS:
		return apierr.RateLimited("rate_limit_exceeded", "the gateway is at its request rate limit; retry after "+strconv.Itoa(retry)+"s", retry)
	case ledger.ReasonConcurrency:
		return apierr.RateLimited("rate_limit_exceeded", "this API key has too many requests in flight; retry when one finishes", retry)
	case ledger.ReasonTPM:
		return apierr.RateLimited("rate_limit_exceeded", "this API key is over its tokens per minute; retry after "+strconv.Itoa(retry)+"s", retry)
	}
	return apierr.RateLimited("rate_limit_exceeded", "this API key is over its request rate ("+d.Reason+"); retry after "+strconv.Itoa(retry)+"s", retry)
}

// lookupsLimited is the refusal of a request whose key the key store
// would not read for now (auth.LookupsLimitedError): the client sees the
// gateway at its global rate limit, as it is.
func lookupsLimited(cfg *config.Config, err *auth.LookupsLimitedError) *apierr.Error {
	g := cfg.RateLimit.Global
	req := ledger.AdmitRequest{Global: ledger.GlobalLimit{RPS: g.RequestsPerSecond, Burst: g.BurstSize}}
	d := ledger.Decision{Reason: ledger.ReasonGlobalRPS, RetryAfter: err.RetryAfter}
	e := rejection(d)
	e.Header = rateLimitHeaders(refusedBy(req, d))
	return e
}

// refusedBy returns d with its request figures describing the limit that
// refused it when that is the global rate, the key's RPS beside an RPM or
// the key's concurrency. A
// decision's request figures describe the key's request rate (RPM, else
// RPS), which did not refuse the request and may not be set at all: the
// client is told instead that the limit that did has nothing left, and
// when to try again. The same goes for the token figures, which describe
// the key's TPM when it has one: a refusal by the period quota gives the
// quota with nothing left and its reset; and a refusal by the TPM resets
// no sooner than Retry-After (the window may hold only reservations,
// whose oldest second is no reset).
func refusedBy(req ledger.AdmitRequest, d ledger.Decision) ledger.Decision {
	switch d.Reason {
	case ledger.ReasonQuota:
		if req.Limits.TPM > 0 {
			d.LimitTokens, d.RemainingTokens = req.Quota, 0
		}
		d.ResetTokens = d.RetryAfter
	case ledger.ReasonTPM:
		d.ResetTokens = max(d.ResetTokens, d.RetryAfter)
	case ledger.ReasonGlobalRPS:
		// ledger.GlobalLimit: a burst of 0 is the rate rounded up.
		burst := int64(req.Global.Burst)
		if burst <= 0 {
			burst = max(int64(math.Ceil(req.Global.RPS)), 1)
		}
		d.LimitRequests, d.RemainingRequests, d.ResetRequests = burst, 0, d.RetryAfter
	case ledger.ReasonConcurrency:
		d.LimitRequests, d.RemainingRequests, d.ResetRequests = req.Limits.MaxConcurrent, 0, d.RetryAfter
	case ledger.ReasonKeyRPS:
		// ledger.KeyLimits: the key's burst is its rate rounded up.
		d.LimitRequests, d.RemainingRequests, d.ResetRequests = max(int64(math.Ceil(req.Limits.RPS)), 1), 0, d.RetryAfter
	}
	return d
}

// rateLimitHeaders are OpenAI's x-ratelimit-* headers for d.
func rateLimitHeaders(d ledger.Decision) http.Header {
	h := http.Header{}
	if d.LimitRequests > 0 {
		h.Set("X-Ratelimit-Limit-Requests", strconv.FormatInt(d.LimitRequests, 10))
		h.Set("X-Ratelimit-Remaining-Requests", strconv.FormatInt(max(d.RemainingRequests, 0), 10))
		h.Set("X-Ratelimit-Reset-Requests", resetString(d.ResetRequests))
	}
	if d.LimitTokens > 0 {
		h.Set("X-Ratelimit-Limit-Tokens", strconv.FormatInt(d.LimitTokens, 10))
		h.Set("X-Ratelimit-Remaining-Tokens", strconv.FormatInt(max(d.RemainingTokens, 0), 10))
		// A period quota that never resets has no reset to tell.
		if d.Reason != ledger.ReasonQuota || d.RetryAfter > 0 {
			h.Set("X-Ratelimit-Reset-Tokens", resetString(d.ResetTokens))
		}
	}
	return h
}

// resetString writes a duration as OpenAI does ("1s", "6m0s", "20ms",
// "59.301s"), rounded up to the millisecond: a client that waits for it
// is not back before the limit has room.
func resetString(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	d = (d + time.Millisecond - 1).Truncate(time.Millisecond)
	if d < time.Second {
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	}
	return d.String()
}
