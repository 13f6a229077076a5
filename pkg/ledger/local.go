package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrLocked reports that another process holds the local ledger file open.
// A CLI that gets it should ask the running server instead.
var ErrLocked = errors.New("ledger file is locked by another process")

// Bucket names of the local store's file. Keys inside the usage buckets are
// built from length-prefixed parts (see appendPart), so no id can collide
// with another however it is spelled.
var (
	bucketSeen     = []byte("seen")     // request id → applied-at unix nanos
	bucketSeenAt   = []byte("seen_at")  // applied-at unix nanos ‖ request id → nothing (prune index)
	bucketUsage    = []byte("usage")    // period id, key id → Totals
	bucketModel    = []byte("model")    // period id, key id, model → Totals
	bucketUser     = []byte("user")     // period id, user id → Totals
	bucketReserved = []byte("reserved") // key id → reserved tokens
)

const (
	// pruneEvery is how often Apply drops request ids older than the
	// dedupe retention.
	pruneEvery = time.Hour
	// pruneBatch bounds the ids one Apply drops, so pruning a long backlog
	// never makes one transaction slow; the rest goes in the next Apply.
	pruneBatch = 10000
)

// LocalStore is a durable ledger in one bbolt file, for the single binary.
// Only one process can open the file at a time. It is safe for concurrent
// use; Apply calls are serialized, each one a single transaction with a
// single fsync.
type LocalStore struct {
	db   *bolt.DB
	path string
	opts options
	// lastPrune is when Apply last dropped every expired request id, in
	// unix nanos.
	lastPrune atomic.Int64
	// admit is the admitter whose reservations Apply settles (nil: none).
	admit atomic.Pointer[MemoryAdmitter]
}

// OpenLocal opens, creating it if needed, the ledger file at path. If another
// process holds the file, OpenLocal waits for the lock timeout (WithLockTimeout,
// default 1s) and then fails with an error wrapping ErrLocked.
func OpenLocal(path string, opts ...Option) (*LocalStore, error) {
	o := newOptions(opts)
	var db *bolt.DB
	err := guard(path, func() (err error) {
		if db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: o.lockTimeout}); err != nil {
			return err
		}
		return db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketSeen, bucketSeenAt, bucketUsage, bucketModel, bucketUser, bucketReserved} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		if db != nil {
			_ = db.Close()
		}
		switch {
		case errors.Is(err, ErrDamaged):
			return nil, err // it names the file
		case errors.Is(err, bolterrors.ErrTimeout):
			err = ErrLocked
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
			// Both meta pages unreadable (the file's head overwritten,
			// say): damaged, with what to do about it.
			return nil, damaged(path, err)
		}
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	}
	return &LocalStore{db: db, opts: o, path: path}, nil
}

// Apply records entries in one transaction: either the whole batch is durable
// when Apply returns nil, or none of it is. Entries whose request id was
// applied before (in an earlier batch or earlier in this one) are skipped.
// Every new entry releases its reservation: the one its request holds in the
// store's admitter (NewLocalAdmitter), whose TPM window then counts the
// entry's tokens at the entry's time, or else its Reserved tokens from the
// key's reservation counter. A batch with an invalid entry is rejected as a whole with an
// error wrapping ErrInvalidEntry.
func (s *LocalStore) Apply(ctx context.Context, entries []Entry) (int, error) {
	for _, e := range entries {
		if err := e.Validate(); err != nil {
			return 0, err
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	now := s.opts.now()
	var applied int
	pruned := false
	// Requests admitted by this store's admitter hold their reservation
	// there, not in the counter; it is settled once the batch is durable.
	admit := s.admit.Load()
	var held map[string]bool
	if admit != nil {
		held = admit.holds(entries)
	}
	var fresh []Entry
	// A batch's entries mostly share a few keys, models and users: their
	// totals are summed here first, so that each usage row is read and
	// written once per batch rather than once per entry and period.
	sums := newBatchSums()
	err := s.update(func(tx *bolt.Tx) error {
		applied = 0
		fresh = fresh[:0]
		sums.reset()
		seen, seenAt := tx.Bucket(bucketSeen), tx.Bucket(bucketSeenAt)
		usage, model, user := tx.Bucket(bucketUsage), tx.Bucket(bucketModel), tx.Bucket(bucketUser)
		stamp := binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano()))
		seenKey := make([]byte, 0, 64)
		for _, e := range entries {
			rid := []byte(e.RequestID)
			if seen.Get(rid) != nil {
				continue
			}
			if err := seen.Put(rid, stamp); err != nil {
				return err
			}
			seenKey = append(append(seenKey[:0], stamp...), rid...)
			if err := seenAt.Put(seenKey, nil); err != nil {
				return err
			}
			sums.add(e)
			if e.Reserved > 0 && !held[e.RequestID] {
				sums.reserved[e.KeyID] -= e.Reserved
			}
			fresh = append(fresh, e)
			applied++
		}
		if err := sums.write(tx, usage, model, user); err != nil {
			return err
		}
		if now.Sub(time.Unix(0, s.lastPrune.Load())) >= pruneEvery {
			done, err := s.prune(seen, seenAt, now)
			if err != nil {
				return err
			}
			pruned = done
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("apply %d entries: %w", len(entries), err)
	}
	if pruned {
		s.lastPrune.Store(now.UnixNano())
	}
	if admit != nil && len(fresh) > 0 {
		admit.settle(fresh)
	}
	return applied, nil
}

// prune drops up to pruneBatch request ids applied before now minus the
// dedupe retention and reports whether none older are left.
func (s *LocalStore) prune(seen, seenAt *bolt.Bucket, now time.Time) (bool, error) {
	horizon := binary.BigEndian.AppendUint64(nil, uint64(now.Add(-s.opts.dedupeRetention).UnixNano()))
	c := seenAt.Cursor()
	n := 0
	for k, _ := c.First(); k != nil && bytes.Compare(k[:8], horizon) < 0; k, _ = c.First() {
		if n == pruneBatch {
			return false, nil
		}
		k = bytes.Clone(k)
		if err := seen.Delete(k[8:]); err != nil {
			return false, err
		}
		if err := c.Delete(); err != nil {
			return false, err
		}
		n++
	}
	return true, nil
}

// Usage returns key keyID's usage in the period of kind p containing at.
func (s *LocalStore) Usage(ctx context.Context, keyID string, p Period, at time.Time) (Totals, error) {
	var t Totals
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k := partsKey(PeriodID(p, at), keyID)
		t = decodeTotals(tx.Bucket(bucketUsage).Get(k))
		return nil
	})
	return t, err
}

// UsageAll returns every key's usage in the period of kind p containing at.
func (s *LocalStore) UsageAll(ctx context.Context, p Period, at time.Time) (map[string]Totals, error) {
	out := map[string]Totals{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		prefix := partsKey(PeriodID(p, at))
		c := tx.Bucket(bucketUsage).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			keyID, _, ok := cutPart(k[len(prefix):])
			if !ok {
				return fmt.Errorf("corrupt usage key %q", k)
			}
			out[keyID] = decodeTotals(v)
		}
		return nil
	})
	return out, err
}

// UsageByModel returns key keyID's usage in the period of kind p containing
// at, by model.
func (s *LocalStore) UsageByModel(ctx context.Context, keyID string, p Period, at time.Time) (map[string]Totals, error) {
	out := map[string]Totals{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		prefix := partsKey(PeriodID(p, at), keyID)
		c := tx.Bucket(bucketModel).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			m, _, ok := cutPart(k[len(prefix):])
			if !ok {
				return fmt.Errorf("corrupt model key %q", k)
			}
			out[m] = decodeTotals(v)
		}
		return nil
	})
	return out, err
}

// UsageByUser returns user userID's usage in the period of kind p containing
// at.
func (s *LocalStore) UsageByUser(ctx context.Context, userID string, p Period, at time.Time) (Totals, error) {
	var t Totals
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k := partsKey(PeriodID(p, at), userID)
		t = decodeTotals(tx.Bucket(bucketUser).Get(k))
		return nil
	})
	return t, err
}

// Reserved returns key keyID's outstanding reserved tokens: the counter
// AddReserved moves plus the reservations of requests its admitter admitted.
func (s *LocalStore) Reserved(ctx context.Context, keyID string) (int64, error) {
	var n int64
	err := s.view(ctx, func(tx *bolt.Tx) error {
		n = decodeInt(tx.Bucket(bucketReserved).Get([]byte(keyID)))
		return nil
	})
	if a := s.admit.Load(); a != nil {
		n += a.reserved(keyID)
	}
	return n, err
}

// AddReserved adds tokens to key keyID's reservation counter, durably; the
// counter never goes below zero.
func (s *LocalStore) AddReserved(ctx context.Context, keyID string, tokens int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.update(func(tx *bolt.Tx) error { return addReserved(tx, keyID, tokens) })
	if err != nil {
		return fmt.Errorf("add reserved %s: %w", keyID, err)
	}
	return nil
}

// Close closes the file and releases its lock.
func (s *LocalStore) Close() error { return s.db.Close() }

func (s *LocalStore) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := closedErr(guard(s.path, func() error { return s.db.View(fn) })); err != nil {
		return fmt.Errorf("read ledger: %w", err)
	}
	return nil
}

// update is db.Update with bbolt's panics turned into errors (guard).
func (s *LocalStore) update(fn func(tx *bolt.Tx) error) error {
	return closedErr(guard(s.path, func() error { return s.db.Update(fn) }))
}

// ErrClosed is the error of a store used after Close: the process is
// stopping, which is no failure of the store's.
var ErrClosed = errors.New("the ledger is closed")

// closedErr wraps bbolt's error for a closed file in ErrClosed.
func closedErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// guard runs fn on the ledger file at path, turning a panic inside bbolt,
// which is how it reports a damaged page it meets (a freelist cut short at
// open, say), into an error wrapping ErrDamaged: the meter then logs its
// failed writes and retries, instead of its goroutine dying with the
// ledger silently no longer written. A file cut short leaves pages its
// meta names past the end of the mapping: reading one faults, which
// SetPanicOnFault makes such a panic. (bbolt rolls a transaction back as
// the panic passes.)
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = damaged(path, r)
		}
	}()
	return fn()
}

// ErrDamaged is the error of a ledger file bbolt found damaged.
var ErrDamaged = errors.New("the ledger file is damaged")

func damaged(path string, r any) error {
	return fmt.Errorf("%w: %s: %v (stop the server, move the file aside and start again: the single binary rebuilds the ledger from the event stream, which keeps nats.stream.max_age of events)", ErrDamaged, path, r)
}

func addReserved(tx *bolt.Tx, keyID string, delta int64) error {
	b := tx.Bucket(bucketReserved)
	k := []byte(keyID)
	n := max(decodeInt(b.Get(k))+delta, 0)
	if n == 0 {
		return b.Delete(k)
	}
	return b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// batchSums are one Apply's totals per usage row and reservation changes
// per key, summed before they are written.
type batchSums struct {
	usage, model, user map[string]*Totals
	reserved           map[string]int64
	// order lists the rows in first-seen order, so that writes go in a
	// stable order.
	order []sumRow
	// day memoizes the period ids of the last entry's day.
	day     [3]int
	periods []string
	// key is scratch space for a row's key: a row already summed is found
	// without making its key a string.
	key []byte
}

type sumRow struct {
	bucket byte // 'u', 'm' or 's' (user)
	key    string
}

func newBatchSums() *batchSums {
	return &batchSums{
		usage: map[string]*Totals{}, model: map[string]*Totals{}, user: map[string]*Totals{},
		reserved: map[string]int64{}, periods: make([]string, len(Periods)),
	}
}

func (b *batchSums) reset() {
	clear(b.usage)
	clear(b.model)
	clear(b.user)
	clear(b.reserved)
	b.order = b.order[:0]
	b.day = [3]int{}
}

// periodIDs returns the id of every period in Periods containing t. The
// slice is reused by the next call.
func (b *batchSums) periodIDs(t time.Time) []string {
	u := t.UTC()
	y, m, d := u.Date()
	if day := [3]int{y, int(m), d}; day != b.day {
		for i, p := range Periods {
			b.periods[i] = PeriodID(p, u)
		}
		b.day = day
	}
	return b.periods
}

func (b *batchSums) add(e Entry) {
	for _, pid := range b.periodIDs(e.Time) {
		b.key = appendPart(appendPart(b.key[:0], pid), e.KeyID)
		b.addRow(b.usage, 'u', e)
		b.key = appendPart(b.key, e.Model)
		b.addRow(b.model, 'm', e)
		if e.UserID != "" {
			b.key = appendPart(appendPart(b.key[:0], pid), e.UserID)
			b.addRow(b.user, 's', e)
		}
	}
}

// addRow adds e to the row of rows keyed b.key.
func (b *batchSums) addRow(rows map[string]*Totals, bucket byte, e Entry) {
	t := rows[string(b.key)]
	if t == nil {
		k := string(b.key)
		t = &Totals{}
		rows[k] = t
		b.order = append(b.order, sumRow{bucket: bucket, key: k})
	}
	t.Add(e)
}

// write adds the sums to the rows in tx.
func (b *batchSums) write(tx *bolt.Tx, usage, model, user *bolt.Bucket) error {
	for _, r := range b.order {
		bk, rows := usage, b.usage
		switch r.bucket {
		case 'm':
			bk, rows = model, b.model
		case 's':
			bk, rows = user, b.user
		}
		if err := addTotals(bk, []byte(r.key), *rows[r.key]); err != nil {
			return err
		}
	}
	for keyID, delta := range b.reserved {
		if delta == 0 {
			continue
		}
		if err := addReserved(tx, keyID, delta); err != nil {
			return err
		}
	}
	return nil
}

// addTotals adds sum to the totals stored under k.
func addTotals(b *bolt.Bucket, k []byte, sum Totals) error {
	t := decodeTotals(b.Get(k))
	t.PromptTokens += sum.PromptTokens
	t.CompletionTokens += sum.CompletionTokens
	t.TotalTokens += sum.TotalTokens
	t.Requests += sum.Requests
	return b.Put(k, encodeTotals(t))
}

func encodeTotals(t Totals) []byte {
	v := make([]byte, 0, 32)
	for _, n := range []int64{t.PromptTokens, t.CompletionTokens, t.TotalTokens, t.Requests} {
		v = binary.BigEndian.AppendUint64(v, uint64(n))
	}
	return v
}

func decodeTotals(v []byte) Totals {
	if len(v) != 32 {
		return Totals{}
	}
	return Totals{
		PromptTokens:     decodeInt(v[0:8]),
		CompletionTokens: decodeInt(v[8:16]),
		TotalTokens:      decodeInt(v[16:24]),
		Requests:         decodeInt(v[24:32]),
	}
}

func decodeInt(v []byte) int64 {
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// partsKey returns a new key made of parts.
func partsKey(parts ...string) []byte {
	var b []byte
	for _, p := range parts {
		b = appendPart(b, p)
	}
	return b
}

// appendPart appends s to b as a uvarint length and the bytes of s. Keys made
// of such parts sort by their first part and never collide.
func appendPart(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// cutPart splits the first part off b.
func cutPart(b []byte) (part string, rest []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}
