package ledger

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A call to Redis that fails without an answer (a timeout, a connection cut)
// may still run: its bytes can sit in the frozen server's socket, or in the
// network, and run when they arrive. An admission that the gateway refused
// with 503 would then hold a concurrency slot for a lease TTL and tokens for
// a reservation TTL on behalf of a request that never ran; a release lost on
// the way would leave its slot held until its lease expires. So the
// RedisAdmitter follows every failed admission with a cancellation, and
// every failed release with the release again, both sent by a canceller in
// the background until Redis answers them.

// cancelLua cancels the admission of request ARGV[1], whether it ran or
// has yet to: it frees the request's entry in the RPM window (KEYS[1]), its
// lease (KEYS[2]) and its reservation (KEYS[3], KEYS[4], and its tokens from
// the sum KEYS[5]), and sets the marker KEYS[6] for ARGV[2] ms, which
// admitLua reads to refuse the admission should it run later.
const cancelLua = `
redis.call('SET', KEYS[6], '1', 'PX', ARGV[2])
local lease = ARGV[1]
redis.call('ZREM', KEYS[1], lease)
redis.call('ZREM', KEYS[2], lease)
local r = tonumber(redis.call('HGET', KEYS[3], lease) or '0')
if r > 0 then
  redis.call('HDEL', KEYS[3], lease)
  if redis.call('DECRBY', KEYS[5], string.format('%d', r)) <= 0 then redis.call('DEL', KEYS[5]) end
end
redis.call('ZREM', KEYS[4], lease)
return 1
`

// Bounds of the canceller.
const (
	// maxCancels bounds the calls waiting to be sent again. Past it a
	// failed call is not followed up: what it may have taken is freed
	// by its TTL, as before a restart of the gateway.
	maxCancels = 100000
	// cancelBatch is the most calls sent in one pipeline.
	cancelBatch = 256
	// cancelWait and cancelMaxWait bound the pause between tries while
	// Redis does not answer.
	cancelWait    = 100 * time.Millisecond
	cancelMaxWait = 5 * time.Second
)

// canceller sends calls to Redis in the background until Redis has answered
// each of them: a goroutine runs while any is waiting, sending them in
// pipelines, pausing between tries with a backoff while Redis does not
// answer. Every call it carries must be idempotent, since a try that fails
// without an answer may run too. It stops trying when the client is closed.
// It is safe for concurrent use.
type canceller struct {
	batch *combiner // its client and call timeout

	mu    sync.Mutex
	idle  sync.Cond // broadcast when running turns false
	queue []*queued
	// confirms are releases done on the master, sent again until enough
	// replicas have them (see WithWaitReplicas): apart from queue, and
	// sent only in what a batch leaves of its room, so that while no
	// replica can have them they neither hold up nor crowd out the calls
	// that have yet to take effect at all. A confirmation left out is
	// only that release's protection against a failover.
	confirms    []*queued
	running     bool
	max         int   // most calls queued, and most confirmations (maxCancels)
	dropped     int64 // calls not followed up since queue was full
	unconfirmed int64 // releases not confirmed since confirms was full
}

func newCanceller(batch *combiner) *canceller {
	c := &canceller{batch: batch, max: maxCancels}
	c.idle.L = &c.mu
	return c
}

// FollowUps counts the calls a RedisAdmitter sends again in the background
// (the cancellation of an admission whose call failed, a release that
// failed, with WithWaitReplicas a release to be confirmed) until Redis
// answers them (and enough replicas have them).
type FollowUps struct {
	// Waiting are queued, to be sent again.
	Waiting int
	// Dropped were not queued since the queue was full (since the
	// admitter was made): what they may hold in Redis is freed by its
	// TTL instead.
	Dropped int64
	// Unconfirmed are releases done on the master that were not queued
	// to be confirmed since that queue was full (with WithWaitReplicas):
	// a failover to a replica without them would hold their slots until
	// their TTL.
	Unconfirmed int64
}

func (c *canceller) followUps() FollowUps {
	c.mu.Lock()
	defer c.mu.Unlock()
	return FollowUps{Waiting: len(c.queue) + len(c.confirms), Dropped: c.dropped, Unconfirmed: c.unconfirmed}
}

// add queues q, without waiting, and starts the goroutine that sends it if
// none runs.
func (c *canceller) add(q queued) { c.push(&c.queue, &c.dropped, q) }

// confirm queues q, a release done on the master, to be sent again until
// enough replicas have it; past the cap it is left out (see confirms).
func (c *canceller) confirm(q queued) { c.push(&c.confirms, &c.unconfirmed, q) }

// push appends q to list, or past c.max counts it in left, and starts the
// goroutine that sends the queues if none runs.
func (c *canceller) push(list *[]*queued, left *int64, q queued) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(*list) >= c.max {
		*left++
		return
	}
	*list = append(*list, &q)
	c.start()
}

// start starts the goroutine that sends the queues, if none runs; c.mu is
// held.
func (c *canceller) start() {
	if !c.running {
		c.running = true
		go c.run()
	}
}

// run sends the queue until it is empty.
func (c *canceller) run() {
	wait := cancelWait
	for {
		c.mu.Lock()
		n := min(len(c.queue), cancelBatch)
		m := min(len(c.confirms), cancelBatch-n)
		if n+m == 0 {
			c.running = false
			c.queue, c.confirms = nil, nil
			c.idle.Broadcast()
			c.mu.Unlock()
			return
		}
		batch := append(append([]*queued(nil), c.queue[:n]...), c.confirms[:m]...)
		c.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), c.batch.callTimeout())
		execQueued(ctx, c.batch.rdb, batch, c.batch.wait)
		cancel()
		var again, confirmAgain []*queued
		closed := false
		for i, q := range batch {
			err := q.cmd.Err()
			if errors.Is(err, redis.ErrClosed) {
				closed = true
			}
			if !retryable(err) {
				continue
			}
			if i < n {
				again = append(again, q)
			} else {
				confirmAgain = append(confirmAgain, q)
			}
		}

		c.mu.Lock()
		if closed {
			// The client is closed (shutdown): nothing more can be sent.
			c.queue, c.confirms = nil, nil
			c.mu.Unlock()
			continue
		}
		// Those to send again go behind the rest: a batch that fails
		// every time must not keep the calls behind it from being sent.
		c.queue = append(c.queue[n:], again...)
		c.confirms = append(c.confirms[m:], confirmAgain...)
		c.mu.Unlock()
		if len(again)+len(confirmAgain) == 0 {
			wait = cancelWait
			continue
		}
		time.Sleep(wait)
		wait = min(2*wait, cancelMaxWait)
	}
}

// wait returns once nothing is waiting to be sent.
func (c *canceller) wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.running {
		c.idle.Wait()
	}
}

// retryable reports whether a call that failed with err is worth sending
// again: any failure to get an answer, or a reply that says the server
// cannot take it yet. Any other reply error would come back every time.
func retryable(err error) bool {
	if err == nil || errors.Is(err, redis.ErrClosed) {
		return false
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true
	}
	for _, p := range []string{"LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "OOM", "NOSCRIPT", "NOREPLICAS"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}
