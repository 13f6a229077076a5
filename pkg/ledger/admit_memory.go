package ledger

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemoryAdmitter is an Admitter whose rates, leases, reservations and TPM
// window live in this process; the period quota reads a ledger's usage. It is
// safe for concurrent use.
//
// It is the admitter of the single binary (NewLocalAdmitter: the local store
// settles its reservations as it applies events, and usage is read under the
// admitter's lock, so the quota is exact) and of rate_limit.storage: memory
// (NewMemoryAdmitter: limits per process, as upstream means that setting; the
// gateway settles each request itself with Settle when it finishes, and the
// quota reads a shared ledger the meter fills a little later, so a burst of
// requests can overshoot the quota by what is in that gap).
//
// It holds state only for the keys in use: a key whose windows are empty and
// whose leases and reservations are gone is dropped within about
// memSweepEvery, as admissions come, without changing any decision (see
// admit_memory_sweep.go).
type MemoryAdmitter struct {
	usage   UsageReader
	now     func() time.Time
	resvTTL time.Duration
	// lockedUsage makes Admit read usage under mu: the store settles
	// reservations under mu after committing usage, so usage and
	// reservations are never both missing a request's tokens.
	lockedUsage bool

	mu        sync.Mutex
	globalTAT time.Time
	keys      map[string]*memKey
	// sweep drops the keys whose state no longer affects a decision, a
	// few at a time (admit_memory_sweep.go).
	sweep memSweep
	// usageCache (lockedUsage only) holds each key's usage as last read
	// from the store, for the period of its last admission. The store
	// changes usage only in Apply, which calls settle, which drops the
	// applied keys' entries; so a cached figure is never behind the
	// store by a request whose reservation is already gone.
	usageCache map[string]cachedUsage
}

// cachedUsage is one key's quota usage in one period.
type cachedUsage struct {
	period Period
	id     string // PeriodID
	tokens int64
}

// memKey is one key's admission state.
type memKey struct {
	id  string
	pos int // index in MemoryAdmitter.sweep.order

	tat    time.Time            // key RPS
	recent []time.Time          // admissions in the RPM window, oldest first
	leases map[string]time.Time // lease id → expiry
	resv   map[string]memResv   // request id → reservation
	// resvSum is the sum of resv's tokens; resvNext the earliest expiry
	// among them (a lower bound), so purge scans resv only when one expired.
	resvSum  int64
	resvNext time.Time
	tpm      map[int64]int64 // unix second → tokens applied
}

type memResv struct {
	tokens  int64
	expires time.Time
}

// NewMemoryAdmitter returns an admitter that keeps every limit in this
// process and reads quota usage from usage (nil: no quota is enforced). now
// is its clock (nil: time.Now). The caller must call Settle when a request's
// usage is known.
func NewMemoryAdmitter(usage UsageReader, now func() time.Time) *MemoryAdmitter {
	if now == nil {
		now = time.Now
	}
	return &MemoryAdmitter{
		usage: usage, now: now, resvTTL: DefaultReservationTTL, keys: map[string]*memKey{},
		sweep: memSweep{every: memSweepEvery, perNew: memSweepPerNew},
	}
}

// NewLocalAdmitter returns the admitter of the single binary over store:
// store.Apply settles the reservations of the requests it applies. A store has
// at most one admitter; a second call replaces the first.
func NewLocalAdmitter(store *LocalStore, now func() time.Time) *MemoryAdmitter {
	a := NewMemoryAdmitter(store, now)
	a.lockedUsage = true
	a.usageCache = map[string]cachedUsage{}
	store.admit.Store(a)
	return a
}

// key returns key id's state, made at now if the admitter holds none.
func (a *MemoryAdmitter) key(id string, now time.Time) *memKey {
	k := a.keys[id]
	if k == nil {
		a.sweepStep(now, a.sweep.perNew)
		k = &memKey{id: id, leases: map[string]time.Time{}, resv: map[string]memResv{}, tpm: map[int64]int64{}}
		a.keys[id] = k
		a.addToSweep(k)
	}
	return k
}

// Admit decides req; see Admitter.
func (a *MemoryAdmitter) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	req = req.withDefaults()
	var used int64
	// arrived picks the period whose quota applies: the one the request
	// arrived in, where its usage is counted.
	arrived := func(now time.Time) time.Time {
		if req.At.IsZero() {
			return now
		}
		return req.At
	}
	readUsage := func(at time.Time) error {
		if req.Quota <= 0 || a.usage == nil {
			return nil
		}
		t, err := a.usage.Usage(ctx, req.KeyID, req.Period, at)
		if err != nil {
			return fmt.Errorf("admit key %s: %w", req.KeyID, err)
		}
		used = t.TotalTokens
		return nil
	}
	if !a.lockedUsage {
		if err := readUsage(arrived(a.now())); err != nil {
			return Decision{}, err
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	a.sweepTick(now)
	at := arrived(now)
	if a.lockedUsage && req.Quota > 0 && a.usage != nil {
		id := PeriodID(req.Period, at)
		if c, ok := a.usageCache[req.KeyID]; ok && c.period == req.Period && c.id == id {
			used = c.tokens
		} else {
			if err := readUsage(at); err != nil {
				return Decision{}, err
			}
			a.usageCache[req.KeyID] = cachedUsage{period: req.Period, id: id, tokens: used}
		}
	}
	k := a.key(req.KeyID, now)
	k.purge(now)
	d := Decision{Allowed: true}
	reject := func(reason string, retry time.Duration) {
		if d.Allowed {
			d.Allowed, d.Reason, d.RetryAfter = false, reason, retry
		}
	}

	var globalTAT time.Time
	if req.Global.RPS > 0 {
		iv, burst := req.Global.Emission()
		ok, tat, _, retry, _ := gcra(a.globalTAT, now, iv, burst)
		if !ok {
			reject(ReasonGlobalRPS, retry)
		}
		globalTAT = tat
	}

	var keyTAT time.Time
	if l := req.Limits; l.RPS > 0 {
		iv, burst := emission(l.RPS, keyBurst(l.RPS))
		ok, tat, rem, retry, reset := gcra(k.tat, now, iv, burst)
		if !ok {
			reject(ReasonKeyRPS, retry)
		}
		keyTAT = tat
		if l.RPM <= 0 {
			d.LimitRequests, d.RemainingRequests, d.ResetRequests = keyBurst(l.RPS), rem, reset
		}
	}

	if l := req.Limits; l.RPM > 0 {
		n := int64(len(k.recent))
		reset := tpmWindow
		if n > 0 {
			reset = k.recent[0].Add(tpmWindow).Sub(now)
		}
		if n >= l.RPM {
			// The window holds more than the limit when the limit was
			// lowered: a slot frees when all but RPM-1 have left.
			reset = k.recent[n-l.RPM].Add(tpmWindow).Sub(now)
			reject(ReasonKeyRPM, reset)
		}
		d.LimitRequests, d.RemainingRequests, d.ResetRequests = l.RPM, max(l.RPM-n, 0), reset
	}

	if l := req.Limits; l.MaxConcurrent > 0 && int64(len(k.leases)) >= l.MaxConcurrent {
		if _, again := k.leases[req.LeaseID]; !again {
			first := now.Add(time.Second)
			for _, exp := range k.leases {
				if exp.Before(first) {
					first = exp
				}
			}
			reject(ReasonConcurrency, first.Sub(now))
		}
	}

	outstanding := k.resvSum - k.resv[req.LeaseID].tokens
	if l := req.Limits; l.TPM > 0 {
		inWindow, secs := k.window(now)
		if !fits(inWindow, outstanding, req.Reserve, l.TPM) {
			reject(ReasonTPM, tpmRetry(secs, k.tpm, excess(inWindow, outstanding, req.Reserve, l.TPM), now))
		}
		d.LimitTokens, d.RemainingTokens = l.TPM, max(l.TPM-inWindow-outstanding, 0)
		if len(secs) > 0 {
			d.ResetTokens = time.Unix(secs[0], 0).Add(tpmWindow).Sub(now)
		}
	}
	if req.Quota > 0 {
		var retry time.Duration
		if end := PeriodEnd(req.Period, at); !end.IsZero() {
			// A request that arrived in a period that has ended since
			// may retry at once: its retry is in the next period.
			retry = max(end.Sub(now), time.Microsecond)
		}
		if !fits(used, outstanding, req.Reserve, req.Quota) {
			if d.Allowed && outstanding > 0 && fits(used, 0, req.Reserve, req.Quota) {
				d.HeldByReservations = true
				reject(ReasonQuota, time.Second)
			}
			reject(ReasonQuota, retry)
		}
		if req.Limits.TPM <= 0 {
			d.LimitTokens, d.RemainingTokens, d.ResetTokens = req.Quota, max(req.Quota-used-outstanding, 0), retry
		}
	}
	if !d.Allowed {
		return d, nil
	}

	// Admitted: record it everywhere.
	if req.Global.RPS > 0 {
		a.globalTAT = globalTAT
	}
	if req.Limits.RPS > 0 {
		k.tat = keyTAT
	}
	if req.Limits.RPM > 0 {
		k.recent = append(k.recent, now)
		d.RemainingRequests = max(d.RemainingRequests-1, 0)
	}
	if req.Limits.MaxConcurrent > 0 {
		k.leases[req.LeaseID] = now.Add(req.LeaseTTL)
	}
	if req.Reserve > 0 && (req.Limits.TPM > 0 || req.Quota > 0) {
		exp := now.Add(a.resvTTL)
		k.resvSum += req.Reserve - k.resv[req.LeaseID].tokens
		k.resv[req.LeaseID] = memResv{tokens: req.Reserve, expires: exp}
		if k.resvNext.IsZero() || exp.Before(k.resvNext) {
			k.resvNext = exp
		}
		d.RemainingTokens = max(d.RemainingTokens-req.Reserve, 0)
	}
	return d, nil
}

// Release frees a lease; see Admitter.
func (a *MemoryAdmitter) Release(_ context.Context, keyID, leaseID string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if k := a.keys[keyID]; k != nil {
		delete(k.leases, leaseID)
	}
	return nil
}

// Renew extends a held lease and reservation; see LeaseRenewer.
func (a *MemoryAdmitter) Renew(_ context.Context, keyID, leaseID string, ttl time.Duration) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := a.keys[keyID]
	if k == nil {
		return false, nil
	}
	now := a.now()
	held := false
	if exp, ok := k.leases[leaseID]; ok && exp.After(now) {
		k.leases[leaseID] = now.Add(ttl)
		held = true
	}
	if r, ok := k.resv[leaseID]; ok && r.expires.After(now) {
		if exp := now.Add(a.resvTTL); exp.After(r.expires) {
			r.expires = exp
			k.resv[leaseID] = r
		}
		held = true
	}
	return held, nil
}

// Settle ends request requestID's reservation and counts its real tokens in
// the key's TPM window at time at. It reports whether the request held a
// reservation that had not expired. Settling a request twice counts its
// tokens twice: the local store calls it once per newly applied entry.
func (a *MemoryAdmitter) Settle(keyID, requestID string, tokens int64, at time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.settleLocked(keyID, requestID, tokens, at, a.now())
}

func (a *MemoryAdmitter) settleLocked(keyID, requestID string, tokens int64, at, now time.Time) bool {
	k := a.keys[keyID]
	if k == nil {
		if tokens <= 0 {
			return false
		}
		// A key this admitter holds nothing of: the tokens still
		// count in its TPM window.
		k = a.key(keyID, now)
	}
	r, held := k.resv[requestID]
	k.resvSum -= r.tokens
	delete(k.resv, requestID)
	if tokens > 0 {
		k.tpm[at.Unix()] += tokens
	}
	return held && r.expires.After(now)
}

// holds reports which of entries hold a reservation that has not expired:
// whether an expired one was purged yet (by an admission of its key or a
// sweep) makes no difference.
func (a *MemoryAdmitter) holds(entries []Entry) map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	out := map[string]bool{}
	for _, e := range entries {
		if k := a.keys[e.KeyID]; k != nil {
			if r, ok := k.resv[e.RequestID]; ok && r.expires.After(now) {
				out[e.RequestID] = true
			}
		}
	}
	return out
}

// settle settles newly applied entries.
func (a *MemoryAdmitter) settle(entries []Entry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	for _, e := range entries {
		a.settleLocked(e.KeyID, e.RequestID, e.PromptTokens+e.CompletionTokens, e.tpmTime(), now)
		delete(a.usageCache, e.KeyID)
	}
}

// reserved returns key keyID's outstanding reservations.
func (a *MemoryAdmitter) reserved(keyID string) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := a.keys[keyID]
	if k == nil {
		return 0
	}
	k.purge(a.now())
	return k.resvSum
}

// purge drops what has left the windows or expired by now.
func (k *memKey) purge(now time.Time) {
	cut := now.Add(-tpmWindow)
	i := 0
	for i < len(k.recent) && !k.recent[i].After(cut) {
		i++
	}
	k.recent = k.recent[i:]
	for id, exp := range k.leases {
		if !exp.After(now) {
			delete(k.leases, id)
		}
	}
	if !k.resvNext.IsZero() && !k.resvNext.After(now) {
		k.resvNext = time.Time{}
		for id, r := range k.resv {
			if !r.expires.After(now) {
				k.resvSum -= r.tokens
				delete(k.resv, id)
			} else if k.resvNext.IsZero() || r.expires.Before(k.resvNext) {
				k.resvNext = r.expires
			}
		}
	}
	oldest := now.Unix() - int64(tpmWindow/time.Second)
	for s := range k.tpm {
		if s <= oldest {
			delete(k.tpm, s)
		}
	}
}

// window returns the tokens in the TPM window and its seconds, oldest first.
func (k *memKey) window(now time.Time) (int64, []int64) {
	var sum int64
	secs := make([]int64, 0, len(k.tpm))
	for s, n := range k.tpm {
		sum += n
		secs = append(secs, s)
	}
	slices.Sort(secs)
	return sum, secs
}

// tpmRetry returns when enough of the window's tokens have left it to free
// excess tokens, or a second when the window alone cannot free them (the
// outstanding reservations must settle first).
func tpmRetry(secs []int64, tpm map[int64]int64, excess int64, now time.Time) time.Duration {
	var freed int64
	for _, s := range secs {
		freed += tpm[s]
		if freed >= excess {
			return time.Unix(s, 0).Add(tpmWindow).Sub(now)
		}
	}
	return time.Second
}
