package keys

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

func byHashKey(prefix, hash string) string { return prefix + ":keys:byhash:" + hash }
func byIDKey(prefix, id string) string     { return prefix + ":keys:id:" + id }
func idsKey(prefix string) string          { return prefix + ":keys:ids" }
func deletedKey(prefix string) string      { return prefix + ":keys:deleted" }

// ChangedChannel is the Redis Pub/Sub channel on which each change of a key
// (changed, disabled, deleted) is announced once it is written, the
// message being the key's hash (Record.SHA256), so that gateways drop what
// they cached of it at once rather than when their entry expires.
func ChangedChannel(prefix string) string { return prefix + ":keys:changed" }

// NotAnnouncedError is what Update, SetStatus and Delete return when the
// change is written (their other results are then valid) but its
// announcement on ChangedChannel was refused or lost (an ACL user without
// the channel, say): gateways see the change when their cached entry
// expires, within 5 s, rather than at once. NotAnnounced tells it apart.
type NotAnnouncedError struct{ Err error }

func (e *NotAnnouncedError) Error() string {
	return "the change is made, but the gateways could not be told at once (" + e.Err.Error() +
		"): they see it within their key cache's 5 s"
}

func (e *NotAnnouncedError) Unwrap() error { return e.Err }

// NotAnnounced splits err into the warning of a change made but not
// announced (see NotAnnouncedError) and any other error.
func NotAnnounced(err error) (warning string, rest error) {
	var na *NotAnnouncedError
	if errors.As(err, &na) {
		return na.Error(), nil
	}
	return "", err
}

// announce publishes a change of the key hashed to hash on ChangedChannel,
// returning a *NotAnnouncedError when that fails.
func announce(ctx context.Context, rdb redis.UniversalClient, prefix, hash string) error {
	if err := rdb.Publish(context.WithoutCancel(ctx), ChangedChannel(prefix), hash).Err(); err != nil {
		return &NotAnnouncedError{Err: err}
	}
	return nil
}

// Create stores a new key made from spec and returns its secret, which is
// shown once and never stored, and its record. A spec that Validate refuses,
// or whose ExpiresAt has passed, is an error wrapping ErrInvalid; an id a
// key has, ErrExists; an id a deleted key had, ErrDeleted.
func Create(ctx context.Context, rdb redis.UniversalClient, prefix string, spec Spec) (string, Record, error) {
	if err := spec.Validate(); err != nil {
		return "", Record{}, err
	}
	now := time.Now()
	if spec.ExpiresAt != nil && !spec.ExpiresAt.After(now) {
		// Such a key would be refused 403 key_expired at its first use.
		return "", Record{}, fmt.Errorf("%w: expires_at %s is in the past", ErrInvalid, spec.ExpiresAt.UTC().Format(time.RFC3339))
	}
	secret := NewSecret()
	rec := Record{Spec: spec, SHA256: Hash(secret), Masked: Mask(secret), CreatedAt: now.UTC().Truncate(time.Second)}
	if rec.ID == "" {
		rec.ID = "key_" + rec.SHA256[:12]
	}
	if rec.Status == "" {
		rec.Status = StatusActive
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return "", Record{}, err
	}
	// Each write touches one Redis key, so the store works the same on
	// Redis Cluster, where the three keys live in different slots. The id
	// is claimed first, so two creates of one id cannot both succeed; the
	// record, which makes the secret work, is written last, so a key that
	// works is always listed. A create cut short leaves at most a claimed
	// id without a record, which reads as deleted and `keys delete` clears.
	ok, err := rdb.SetNX(ctx, byIDKey(prefix, rec.ID), rec.SHA256, 0).Result()
	if err != nil {
		return "", Record{}, fmt.Errorf("create key %s: %w", rec.ID, err)
	}
	if !ok {
		return "", Record{}, fmt.Errorf("create key %s: %w", rec.ID, ErrExists)
	}
	// The ledger keeps usage by key id, and a deleted key's events may
	// still be on their way to it: a key given a deleted key's id would
	// start with that key's usage. Delete marks the id before it frees
	// it, so once the claim above holds, the mark is there to see.
	deleted, err := rdb.SIsMember(ctx, deletedKey(prefix), rec.ID).Result()
	if err == nil && deleted {
		err = ErrDeleted
	}
	if err == nil {
		err = rdb.SAdd(ctx, idsKey(prefix), rec.ID).Err()
	}
	if err == nil {
		err = rdb.Set(ctx, byHashKey(prefix, rec.SHA256), body, 0).Err()
	}
	if err != nil {
		undo := context.WithoutCancel(ctx)
		_ = rdb.SRem(undo, idsKey(prefix), rec.ID).Err()
		_ = rdb.Del(undo, byIDKey(prefix, rec.ID)).Err()
		return "", Record{}, fmt.Errorf("create key %s: %w", rec.ID, err)
	}
	return secret, rec, nil
}

// LookupHash returns the key whose secret has the SHA-256 hash (hex).
func LookupHash(ctx context.Context, rdb redis.UniversalClient, prefix, hash string) (Record, error) {
	body, err := rdb.Get(ctx, byHashKey(prefix, hash)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("look up key: %w", err)
	}
	return decode(body)
}

// Get returns the key with public id id.
func Get(ctx context.Context, rdb redis.UniversalClient, prefix, id string) (Record, error) {
	hash, err := rdb.Get(ctx, byIDKey(prefix, id)).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, fmt.Errorf("key %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("key %s: %w", id, err)
	}
	rec, err := LookupHash(ctx, rdb, prefix, hash)
	if err != nil {
		return Record{}, fmt.Errorf("key %s: %w", id, err)
	}
	return rec, nil
}

// List returns every key, oldest first.
func List(ctx context.Context, rdb redis.UniversalClient, prefix string) ([]Record, error) {
	ids, err := rdb.SMembers(ctx, idsKey(prefix)).Result()
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	recs, err := GetMany(ctx, rdb, prefix, ids)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	out := make([]Record, 0, len(recs))
	for _, rec := range recs {
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b Record) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// GetMany returns the keys of ids that exist, by id, in two pipelined
// round trips whatever their number.
func GetMany(ctx context.Context, rdb redis.UniversalClient, prefix string, ids []string) (map[string]Record, error) {
	out := make(map[string]Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	hashes := make([]*redis.StringCmd, len(ids))
	pipe := rdb.Pipeline()
	for i, id := range ids {
		hashes[i] = pipe.Get(ctx, byIDKey(prefix, id))
	}
	// Exec reports the first command's error only: a missing key's
	// redis.Nil there would hide a failed read after it, each is looked at.
	if err := execEach(ctx, pipe); err != nil {
		return nil, err
	}
	pipe = rdb.Pipeline()
	var bodies []*redis.StringCmd
	for _, h := range hashes {
		hash, err := h.Result()
		if errors.Is(err, redis.Nil) {
			continue // no such key
		}
		if err != nil {
			return nil, err
		}
		bodies = append(bodies, pipe.Get(ctx, byHashKey(prefix, hash)))
	}
	if len(bodies) == 0 {
		return out, nil
	}
	if err := execEach(ctx, pipe); err != nil {
		return nil, err
	}
	for _, b := range bodies {
		body, err := b.Bytes()
		if errors.Is(err, redis.Nil) {
			continue // a half-deleted key
		}
		if err != nil {
			return nil, err
		}
		rec, err := decode(body)
		if err != nil {
			return nil, err
		}
		out[rec.ID] = rec
	}
	return out, nil
}

// SetStatus sets key id's status (active or disabled) and returns the
// updated record. A gateway's cache may use the old status for its TTL.
func SetStatus(ctx context.Context, rdb redis.UniversalClient, prefix, id, status string) (Record, error) {
	if status != StatusActive && status != StatusDisabled {
		return Record{}, fmt.Errorf("%w: status %q: want active or disabled", ErrInvalid, status)
	}
	return update(ctx, rdb, prefix, id, func(r *Record) error { r.Status = status; return nil })
}

// Update changes key id by patch, a JSON merge patch (RFC 7386) of its
// Spec: a field given replaces the key's, null clears it (the key then
// takes auth.defaults or rate_limit.per_key, or has no expiry, no model or
// address restriction), and limits is merged field by field (limits.enabled
// false drops the key's own limits; a limit given to a key with enabled
// false drops that). The id and
// the secret do not change. The result is checked as Create checks a
// spec (an error wrapping ErrInvalid), an expiry the patch sets must be
// to come, and it returns the updated record. A gateway's cache may use
// the old record for its TTL.
func Update(ctx context.Context, rdb redis.UniversalClient, prefix, id string, patch []byte) (Record, error) {
	var change map[string]any
	dec := json.NewDecoder(bytes.NewReader(patch))
	dec.UseNumber()
	if err := dec.Decode(&change); err != nil || change == nil {
		return Record{}, fmt.Errorf("%w: the change must be a JSON object of key fields", ErrInvalid)
	}
	// Names and types as a spec has them.
	var check Spec
	strict := json.NewDecoder(bytes.NewReader(patch))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&check); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
	}
	if err := exactNames(change, specFields); err != nil {
		return Record{}, err
	}
	if l, ok := change["limits"].(map[string]any); ok {
		if err := exactNames(l, limitsFields); err != nil {
			return Record{}, err
		}
	}
	if v, ok := change["status"]; ok && v == nil {
		return Record{}, fmt.Errorf("%w: status null: give active or disabled", ErrInvalid)
	}
	if v, ok := change["id"]; ok && v != id {
		return Record{}, fmt.Errorf("%w: a key's id does not change (create a key with the new id, move its clients, delete this one)", ErrInvalid)
	}
	_, setsExpiry := change["expires_at"]
	return update(ctx, rdb, prefix, id, func(r *Record) error {
		cur, err := json.Marshal(r.Spec)
		if err != nil {
			return err
		}
		var doc map[string]any
		dec := json.NewDecoder(bytes.NewReader(cur))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return err
		}
		doc = mergePatch(doc, change)
		settleLimits(doc, change)
		merged, err := json.Marshal(doc)
		if err != nil {
			return err
		}
		var spec Spec
		if err := json.Unmarshal(merged, &spec); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
		}
		spec.ID = r.ID
		if spec.Status == "" {
			spec.Status = StatusActive
		}
		if spec.Limits.IsZero() {
			spec.Limits = nil
		}
		if err := spec.Validate(); err != nil {
			return err
		}
		if setsExpiry && spec.ExpiresAt != nil && !spec.ExpiresAt.After(time.Now()) {
			return fmt.Errorf("%w: expires_at %s is in the past (to stop a key now, disable it)", ErrInvalid, spec.ExpiresAt.UTC().Format(time.RFC3339))
		}
		r.Spec = spec
		return nil
	})
}

// specFields and limitsFields are the JSON names of Spec's and Limits'
// fields, as written: encoding/json would also take another case of them.
var (
	specFields   = jsonNames(reflect.TypeFor[Spec]())
	limitsFields = jsonNames(reflect.TypeFor[Limits]())
)

func jsonNames(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			out[name] = true
		}
	}
	return out
}

// exactNames refuses a member of m whose name is not one of names as
// written: a change spelled "NAME" would be merged beside "name" and lost.
func exactNames(m map[string]any, names map[string]bool) error {
	for k := range m {
		if !names[k] {
			return fmt.Errorf("%w: %q is no field of a key (the names are lower case, as documented)", ErrInvalid, k)
		}
	}
	return nil
}

// limitFields are the limits a key may set, beside enabled.
var limitFields = []string{"requests_per_second", "requests_per_minute", "tokens_per_minute", "max_concurrent"}

// settleLimits makes a change of limits mean what it says, in doc, the key
// spec change was merged into: limits.enabled false frees the key of every
// limit, so it drops the key's own (the change may not give any); a limit
// given to a key that had none (enabled false) limits it, so it drops that
// enabled false.
func settleLimits(doc, change map[string]any) {
	given, _ := change["limits"].(map[string]any)
	merged, _ := doc["limits"].(map[string]any)
	if given == nil || merged == nil {
		return
	}
	enabled, setsEnabled := given["enabled"]
	switch {
	case setsEnabled && enabled == false:
		for _, f := range limitFields {
			if _, ok := given[f]; !ok {
				delete(merged, f)
			}
		}
	case !setsEnabled && merged["enabled"] == false:
		for _, f := range limitFields {
			if v, ok := given[f]; ok && v != nil {
				delete(merged, "enabled")
				return
			}
		}
	}
}

// mergePatch applies the JSON merge patch patch to doc (RFC 7386 §2).
func mergePatch(doc, patch map[string]any) map[string]any {
	if doc == nil {
		doc = map[string]any{}
	}
	for k, v := range patch {
		switch v := v.(type) {
		case nil:
			delete(doc, k)
		case map[string]any:
			sub, _ := doc[k].(map[string]any)
			doc[k] = mergePatch(sub, v)
		default:
			doc[k] = v
		}
	}
	return doc
}

// update changes key id's record with fn, retrying when another writer
// changed it meanwhile.
// updateWait bounds how long update retries a change that other changes
// of the same key keep undoing.
const updateWait = 5 * time.Second

func update(ctx context.Context, rdb redis.UniversalClient, prefix, id string, fn func(*Record) error) (Record, error) {
	hash, err := rdb.Get(ctx, byIDKey(prefix, id)).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, fmt.Errorf("key %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("key %s: %w", id, err)
	}
	key := byHashKey(prefix, hash)
	var rec Record
	// Concurrent changes of one key retry (after a short random pause, so
	// that the writers spread out) until one has waited updateWait.
	deadline := time.Now().Add(updateWait)
	for try := 0; ; try++ {
		err = rdb.Watch(ctx, func(tx *redis.Tx) error {
			body, err := tx.Get(ctx, key).Bytes()
			if errors.Is(err, redis.Nil) {
				return ErrNotFound
			}
			if err != nil {
				return err
			}
			if rec, err = decode(body); err != nil {
				return err
			}
			if err := fn(&rec); err != nil {
				return err
			}
			out, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, key, out, 0)
				return nil
			})
			return err
		}, key)
		if !errors.Is(err, redis.TxFailedErr) {
			break
		}
		if time.Now().After(deadline) {
			err = ErrBusy
			break
		}
		select {
		case <-ctx.Done():
			return Record{}, fmt.Errorf("key %s: %w", id, ctx.Err())
		case <-time.After(time.Duration(rand.Int64N(int64(min(try+1, 20)) * int64(time.Millisecond)))):
		}
	}
	if err != nil {
		return Record{}, fmt.Errorf("key %s: %w", id, err)
	}
	return rec, announce(ctx, rdb, prefix, hash)
}

// Delete removes key id: its secret stops working at once on the gateways
// that hear the announcement (ChangedChannel), and on the others once their
// caches expire. The id is not given to another key (see Create): the usage the
// ledger keeps under it stays the deleted key's.
func Delete(ctx context.Context, rdb redis.UniversalClient, prefix, id string) error {
	hash, err := rdb.Get(ctx, byIDKey(prefix, id)).Result()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("key %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("key %s: %w", id, err)
	}
	// The id is marked deleted first, before it is freed, so a Create can
	// never take it over. An id whose record is gone was either left by a
	// create cut short, whose key never worked and is not marked, or by a
	// delete cut short, which marked it already.
	n, err := rdb.Exists(ctx, byHashKey(prefix, hash)).Result()
	if err == nil && n > 0 {
		err = rdb.SAdd(ctx, deletedKey(prefix), id).Err()
	}
	if err != nil {
		return fmt.Errorf("delete key %s: %w", id, err)
	}
	// The record goes next, so the secret stops working before anything
	// else changes: a key whose id outlives it reads as deleted, and a
	// delete cut short can be run again. One Redis key per write, as in
	// Create.
	var announced error
	for _, del := range []func() error{
		func() error {
			err := rdb.Del(ctx, byHashKey(prefix, hash)).Err()
			if err == nil {
				announced = announce(ctx, rdb, prefix, hash)
			}
			return err
		},
		func() error { return rdb.Del(ctx, byIDKey(prefix, id)).Err() },
		func() error { return rdb.SRem(ctx, idsKey(prefix), id).Err() },
	} {
		if err := del(); err != nil {
			return fmt.Errorf("delete key %s: %w", id, err)
		}
	}
	return announced
}

func decode(body []byte) (Record, error) {
	var rec Record
	if err := json.Unmarshal(body, &rec); err != nil {
		return Record{}, fmt.Errorf("decode key record: %w", err)
	}
	return rec, nil
}

// execEach sends pipe, whose commands' errors the caller reads one by one,
// and returns the pipeline's own failure: that of a pipeline that never went
// out (a connection that failed its AUTH, say), whose commands go-redis
// leaves without reply or error.
func execEach(ctx context.Context, pipe redis.Pipeliner) error {
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	for _, c := range cmds {
		if c.Err() != nil {
			return nil
		}
	}
	return err
}
