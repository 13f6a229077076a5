package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AttemptsBucket is the JetStream key-value bucket in which the notifier
// records the failed attempts of the events it will try again.
//
// JetStream's NumDelivered is no count of attempts: it also rises for an
// event handed back unstarted at shutdown, and for one whose ack wait ran
// out while it waited in a notifier's prefetch buffer. Counting it as
// attempts dead-lettered events that were never POSTed. So a failed attempt
// is written down before the event is scheduled again, and a redelivered
// event (NumDelivered > 1) reads the count back; a first delivery, and an
// event delivered at its first attempt, cost nothing extra.
//
// Keys are "<durable>.<stream sequence>". An event's record is removed, with
// nothing left in its place, once the event is delivered or dead-lettered,
// so the bucket holds about the events being retried: at most MaxAckPending
// per endpoint. A record whose removal failed, or whose event was never
// settled (its consumer deleted, the event aged out of the stream), is kept
// as long as the longest MaxAge of the endpoints and an hour more, after
// which the event is past retrying anyway; the bucket is bounded to
// attemptsMaxBytes all the same. When an attempt ends with the process
// (killed mid-POST) it is not written down and is made again; MaxAge still
// bounds how long an event is retried.
const AttemptsBucket = "LLMPROXY_WEBHOOK_ATTEMPTS"

// attemptsStream is the stream that holds AttemptsBucket.
const attemptsStream = "KV_" + AttemptsBucket

// attemptsMaxBytes bounds AttemptsBucket. A record is about 100 to 700
// bytes (the last error holds up to 512 bytes of the receiver's answer), so
// this holds the records of several hundred thousand events in retry, far
// more than the MaxAckPending of a few endpoints. A full bucket takes no
// new record: the attempt is then not counted (more attempts than
// MaxAttempts, never fewer; MaxAge still bounds them) and a warning is
// logged.
const attemptsMaxBytes = 256 << 20

// attemptsBounds are the bounds openAttempts tries in turn: a server whose
// JetStream store is too small to reserve attemptsMaxBytes (max_file_store
// under 256 MiB with the event streams) takes a smaller bound, and one that
// can reserve nothing more an unbounded bucket, which its TTL and the
// endpoints' MaxAckPending still keep small, rather than have the notifier
// refuse to start.
var attemptsBounds = []int64{attemptsMaxBytes, 16 << 20, -1}

// errCodeNoStorage is JetStream's "insufficient storage resources
// available": the server cannot reserve a stream's max bytes.
const errCodeNoStorage jetstream.ErrorCode = 10047

// attemptsTimeout bounds one read or write of the attempts bucket.
const attemptsTimeout = 10 * time.Second

// attemptRecord is what is known of the failed attempts to deliver one event
// to one endpoint.
type attemptRecord struct {
	// Attempts are the failed attempts that count towards max_attempts;
	// Deferred those the receiver answered with Retry-After, which only
	// max_age bounds.
	Attempts   int    `json:"attempts"`
	Deferred   int    `json:"deferred,omitempty"`
	LastStatus int    `json:"last_status"`
	LastError  string `json:"last_error"`
	// Pending, when set, is the dead letter the event was settled to but
	// that could not be stored: the event's next delivery stores it
	// without POSTing the event again.
	Pending *pendingDeadLetter `json:"dlq_pending,omitempty"`
}

// pendingDeadLetter is what a dead letter holds beside the event and the
// endpoint, kept until it is stored.
type pendingDeadLetter struct {
	Reason     string    `json:"reason"`
	Attempts   int       `json:"attempts"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
	FailedAt   time.Time `json:"failed_at"`
}

// attemptLog stores attempt records across processes and restarts.
// Implementations must be safe for concurrent use.
type attemptLog interface {
	// get returns the record under key; ok is false when there is none.
	get(ctx context.Context, key string) (r attemptRecord, ok bool, err error)
	put(ctx context.Context, key string, r attemptRecord) error
	// remove deletes the record under key and leaves nothing in its place;
	// a key without a record is no error.
	remove(ctx context.Context, key string) error
}

// attemptKey is the key of the event at stream sequence seq for the
// endpoint called name: its consumer's durable name, '.', seq.
func attemptKey(name string, seq uint64) string {
	return DurableName(name) + "." + strconv.FormatUint(seq, 10)
}

// kvAttempts is an attemptLog on a JetStream key-value bucket and the stream
// under it.
type kvAttempts struct {
	kv     jetstream.KeyValue
	stream jetstream.Stream
}

func (a kvAttempts) get(ctx context.Context, key string) (attemptRecord, bool, error) {
	e, err := a.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return attemptRecord{}, false, nil
	}
	if err != nil {
		return attemptRecord{}, false, err
	}
	var r attemptRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return attemptRecord{}, false, fmt.Errorf("decode attempt record %s: %w", key, err)
	}
	return r, true, nil
}

func (a kvAttempts) put(ctx context.Context, key string, r attemptRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = a.kv.Put(ctx, key, b)
	return err
}

// remove purges key's subject from the bucket's stream. A key-value Delete
// or Purge would leave a marker under the key for as long as the bucket
// keeps entries, one per event, which is what removing the record avoids.
func (a kvAttempts) remove(ctx context.Context, key string) error {
	return a.stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+AttemptsBucket+"."+key))
}

// reopeningAttempts is the attempts bucket of a running notifier: a call
// that finds the bucket gone (a NATS server back without its store) opens
// it again and is made once more, so attempts keep counting towards
// MaxAttempts without a restart.
type reopeningAttempts struct {
	js  jetstream.JetStream
	ttl time.Duration

	mu  sync.Mutex
	cur kvAttempts
}

func newReopeningAttempts(ctx context.Context, js jetstream.JetStream, ttl time.Duration) (*reopeningAttempts, error) {
	kv, err := openAttempts(ctx, js, ttl)
	if err != nil {
		return nil, err
	}
	return &reopeningAttempts{js: js, ttl: ttl, cur: kv}, nil
}

func (a *reopeningAttempts) get(ctx context.Context, key string) (r attemptRecord, ok bool, err error) {
	err = a.do(ctx, func(kv kvAttempts) error {
		r, ok, err = kv.get(ctx, key)
		return err
	})
	return r, ok, err
}

func (a *reopeningAttempts) put(ctx context.Context, key string, r attemptRecord) error {
	return a.do(ctx, func(kv kvAttempts) error { return kv.put(ctx, key, r) })
}

func (a *reopeningAttempts) remove(ctx context.Context, key string) error {
	return a.do(ctx, func(kv kvAttempts) error { return kv.remove(ctx, key) })
}

// do runs f on the bucket, and once more on a bucket opened again when f
// found none: a publish to a bucket without its stream gets no response
// from a stream, a read no responder.
func (a *reopeningAttempts) do(ctx context.Context, f func(kvAttempts) error) error {
	a.mu.Lock()
	kv := a.cur
	a.mu.Unlock()
	err := f(kv)
	if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) &&
		!errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	again, oerr := openAttempts(ctx, a.js, a.ttl)
	if oerr != nil {
		return err
	}
	a.mu.Lock()
	a.cur = again
	a.mu.Unlock()
	return f(again)
}

// openAttempts creates the attempts bucket, keeping entries for ttl, bounded
// to attemptsMaxBytes and with the event stream's replicas, or opens it; a
// bucket that keeps entries for less than ttl, or has another bound (one
// made by an earlier release has none), is updated. A server without room
// for the bound gets the next of attemptsBounds.
func openAttempts(ctx context.Context, js jetstream.JetStream, ttl time.Duration) (kvAttempts, error) {
	kv, err := js.KeyValue(ctx, AttemptsBucket)
	switch {
	case err == nil:
		s, err := js.Stream(ctx, attemptsStream)
		if err != nil {
			return kvAttempts{}, err
		}
		cfg := s.CachedInfo().Config
		if cfg.MaxAge >= ttl && cfg.MaxBytes == attemptsMaxBytes {
			return kvAttempts{kv: kv, stream: s}, nil
		}

		// Another notifier may keep entries longer: keep its TTL.
		ttl = max(ttl, cfg.MaxAge)
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return kvAttempts{}, err
	}
	replicas := 1
	if s, err := js.Stream(ctx, events.StreamName); err == nil {
		replicas = max(s.CachedInfo().Config.Replicas, 1)
	}
	for _, bound := range attemptsBounds {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      AttemptsBucket,
			Description: "LLMProxy notifier: failed webhook attempts of events to be retried",
			History:     1,
			TTL:         ttl,
			MaxBytes:    bound,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
		var api *jetstream.APIError
		if !errors.As(err, &api) || api.ErrorCode != errCodeNoStorage {
			break
		}
	}
	if err != nil {
		return kvAttempts{}, err
	}
	s, err := js.Stream(ctx, attemptsStream)
	if err != nil {
		return kvAttempts{}, err
	}
	return kvAttempts{kv: kv, stream: s}, nil
}
