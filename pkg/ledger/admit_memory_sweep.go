package ledger

import (
	"maps"
	"time"
)

// A MemoryAdmitter must not keep every key it has ever seen: identities come
// from API keys, from Lua on_auth hooks (which may make them out of client
// input) and from anonymous requests. It drops a key once the key's state,
// purged, is that of a key never seen (see memKey.idle), and does so a few
// keys at a time, so that no admission waits on a pass over every key.
//
// Dropping such a key changes no decision: every use of a key purges it
// first, so a later decision about it is the one it would have got had it
// been kept (for a clock that does not go back). With the key goes its
// cached usage figure: a figure equals the store's (see
// MemoryAdmitter.usageCache), so reading it again decides alike.
const (
	// memSweepEvery is how often the sweep passes over every key while
	// admissions come: a key idle for longer is dropped.
	memSweepEvery = time.Minute
	// memSweepPerNew is how many keys the sweep examines for each key
	// added. Being more than one, it keeps up with any stream of new
	// keys: a pass over n keys ends before n/2 more are added, so the
	// admitter holds about twice the keys in use at most.
	memSweepPerNew = 2
	// memSweepStepMax bounds the keys one admission examines for the
	// time since the last one (about a millisecond's work in the worst
	// case, keys out of the CPU's caches); a pass after a quiet spell
	// ends over the admissions that follow.
	memSweepStepMax = 64
	// memSweepShrinkMin is the fewest slots of the key index below which
	// it is never rebuilt smaller.
	memSweepShrinkMin = 1024
)

// memSweep is the state of a MemoryAdmitter's sweep, guarded by the
// admitter's mu. With every and perNew zero nothing is dropped but by an
// explicit sweepStep.
type memSweep struct {
	// order holds every key of the admitter's keys, in no particular
	// order (memKey.pos is a key's index): a pass walks it down from the
	// end, order[cursor-1] being the next key to examine, so a key moved
	// into the place of one dropped was examined already.
	order  []*memKey
	cursor int
	// credit is how many keys the time since the last admission owes the
	// pass: every keys per sweep interval, at most one pass.
	credit float64
	last   time.Time
	every  time.Duration // 0: no sweep for the passing time
	perNew int
}

// sweepTick examines the keys the time passed since the last admission
// owes the sweep. The caller holds mu.
func (a *MemoryAdmitter) sweepTick(now time.Time) {
	sw := &a.sweep
	if sw.every <= 0 {
		return
	}
	if el := now.Sub(sw.last); el > 0 && !sw.last.IsZero() {
		n := float64(len(sw.order))
		sw.credit = min(sw.credit+n*float64(el)/float64(sw.every), n)
	}
	sw.last = now
	if sw.credit >= 1 {
		n := min(int(sw.credit), memSweepStepMax)
		sw.credit -= float64(n)
		a.sweepStep(now, n)
	}
}

// sweepStep examines up to n keys, purging each at now and dropping those
// left idle. The caller holds mu.
func (a *MemoryAdmitter) sweepStep(now time.Time, n int) {
	sw := &a.sweep
	for n = min(n, len(sw.order)); n > 0; n-- {
		if sw.cursor <= 0 || sw.cursor > len(sw.order) {
			sw.cursor = len(sw.order)
		}
		sw.cursor--
		k := sw.order[sw.cursor]
		k.purge(now)
		if k.idle(now) {
			a.drop(k)
		}
	}
}

// addToSweep puts a new key in the sweep's index. The caller holds mu.
func (a *MemoryAdmitter) addToSweep(k *memKey) {
	k.pos = len(a.sweep.order)
	a.sweep.order = append(a.sweep.order, k)
}

// drop forgets key k. The maps and the index are rebuilt once they hold a
// quarter of what they were sized for, since a Go map never gives back the
// room of deleted entries: after a burst of identities the admitter's
// memory follows the keys in use. The caller holds mu.
func (a *MemoryAdmitter) drop(k *memKey) {
	sw := &a.sweep
	last := len(sw.order) - 1
	sw.order[k.pos] = sw.order[last]
	sw.order[k.pos].pos = k.pos
	sw.order[last] = nil
	sw.order = sw.order[:last]
	delete(a.keys, k.id)
	delete(a.usageCache, k.id)
	if c := cap(sw.order); c > memSweepShrinkMin && len(sw.order) < c/4 {
		a.shrink()
	}
}

// shrink rebuilds the key index and maps at twice the keys they hold. The
// caller holds mu.
func (a *MemoryAdmitter) shrink() {
	sw := &a.sweep
	n := len(sw.order)
	sw.order = append(make([]*memKey, 0, 2*n), sw.order...)
	keys := make(map[string]*memKey, 2*n)
	maps.Copy(keys, a.keys)
	a.keys = keys
	if a.usageCache != nil {
		cache := make(map[string]cachedUsage, 2*len(a.usageCache))
		maps.Copy(cache, a.usageCache)
		a.usageCache = cache
	}
}

// idle reports whether k, purged at now, holds nothing a decision at now or
// later reads: a key RPS tat not ahead of now (gcra takes an older one as
// now), no admission in the RPM window, no lease, no reservation and no
// tokens in the TPM window.
func (k *memKey) idle(now time.Time) bool {
	return !k.tat.After(now) && len(k.recent) == 0 && len(k.leases) == 0 && len(k.resv) == 0 && len(k.tpm) == 0
}
