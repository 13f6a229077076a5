package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// combiner sends the commands of concurrent callers to Redis together, one
// pipeline (one write and one read on each side) for as many as are waiting:
// a caller that finds no pipeline of the combiner in flight sends its
// command at once, alone, so an idle gateway pays no extra hop; callers that
// come while one is in flight queue theirs, and the first of them sends the
// whole queue as the next pipeline once the one in flight has its replies.
// Under load each admission and release then costs a share of a round trip
// instead of one of its own, in the gateway and in Redis.
//
// Commands in one pipeline are independent: each gets its own reply or
// error, as if sent alone. A pipeline runs under its sender's context minus
// its cancellation, so one client going away fails nobody else's command,
// and under the combiner's own timeout (see callTimeout).
type combiner struct {
	rdb redis.UniversalClient
	// timeout bounds each pipeline (0: callTimeout).
	timeout time.Duration
	// wait is how many replicas must have the writes of the commands
	// marked queued.wait that the canceller sends (see WithWaitReplicas);
	// the combiner's own pipelines, which requests wait on, never wait.
	wait replicaWait

	mu    sync.Mutex
	busy  bool       // a pipeline is in flight, or its sender is being woken
	queue []*pending // commands for the next pipeline, oldest first
}

// callTimeout bounds one call to Redis on a request's path: an admission,
// a release, a pipeline of them. A Redis that takes connections but does
// not answer (stopped, swapping, cut off by the network) must fail the call
// within seconds, so that the gateway refuses the request with 503 instead
// of holding it, and every request after it, for as long as Redis is
// silent. go-redis's own timeouts do not bound that: a pipeline whose reply
// times out is sent again on a new connection, whose handshake times out in
// turn, about ten times over. The deadline is checked between tries, so a
// call may last one read timeout (go-redis's default: 5 s) past it.
const callTimeout = 5 * time.Second

// callTimeout returns the bound of one call: the combiner's timeout, or
// callTimeout.
func (c *combiner) callTimeout() time.Duration {
	if c.timeout > 0 {
		return c.timeout
	}
	return callTimeout
}

// queued is one command of a pipeline.
type queued struct {
	// send queues the command on pipe; with eval, a script goes as EVAL
	// instead of EVALSHA.
	send func(ctx context.Context, pipe redis.Pipeliner, eval bool) redis.Cmder
	// script is set when the command is an EVALSHA: a NOSCRIPT reply (a
	// server that has not cached the script) sends it again as EVAL.
	script bool
	// again, when set, queues the command for its second sending after
	// its connection closed without an answer (see execQueued): the
	// command as it was, when running it twice does what running it once
	// does, or a form of it that finds out whether the first ran.
	again func(ctx context.Context, pipe redis.Pipeliner, eval bool) redis.Cmder
	// wait marks a command the canceller sends until enough replicas
	// have its writes (a lease's release, an admission's cancellation:
	// lost in a failover, they would hold a slot until its TTL): one that
	// fewer replicas had in time fails with ErrNotReplicated, and is sent
	// again.
	wait bool
	cmd  redis.Cmder // its reply, once sent
}

// replicaWait is how many replicas, within timeout, must acknowledge the
// writes of the commands marked queued.wait; n 0 waits for none. mark is
// the key of the write each such pipeline makes before its WAIT (see
// execQueued).
type replicaWait struct {
	n       int
	timeout time.Duration
	mark    string
}

// scriptCmd returns the queued EVALSHA of s.
func scriptCmd(s *redis.Script, keys []string, args func() []any) queued {
	return queued{script: true, send: func(ctx context.Context, pipe redis.Pipeliner, eval bool) redis.Cmder {
		if eval {
			return s.Eval(ctx, pipe, keys, args()...)
		}
		return s.EvalSha(ctx, pipe, keys, args()...)
	}}
}

// idempotent returns q with its command sent again as it is after its
// connection closed without an answer.
func idempotent(q queued) queued {
	q.again = q.send
	return q
}

// execQueued sends qs in one pipeline, then the scripts the server had not
// cached again as EVAL in a second one. Each command keeps its own reply or
// error.
//
// A pipeline whose connection closed without an answer (EOF, a reset) is
// one Redis closed, most often a pooled connection it had closed before
// (idle past its timeout, a restart; over TLS go-redis cannot tell before
// it uses one): each command ran or did not, and none will run later. Its
// commands that can be sent again (queued.again) go once more, on another
// connection. go-redis does that itself for a pipeline of commands it may
// send again, but not for one holding a command it may not (see oneShot).
//
// With rw, a pipeline holding commands marked queued.wait ends with a WAIT
// for rw.n replicas; when fewer have its writes in time, those commands
// fail with ErrNotReplicated.
func execQueued(ctx context.Context, rdb redis.UniversalClient, qs []*queued, rw replicaWait) {
	run := func(qs []*queued, eval bool) {
		pipe := rdb.Pipeline()
		waits := false
		for _, q := range qs {
			q.cmd = q.send(ctx, pipe, eval)
			waits = waits || q.wait
		}
		var w *redis.IntCmd
		var m *redis.StatusCmd
		if waits && rw.n > 0 {
			// WAIT counts the replicas that have the last write of its
			// own connection, the pipeline's; since Redis 7.2 (and in
			// Valkey) a command that changed nothing is none, so a
			// release already done on the master, or an Apply sent
			// again whose entries were all there, would have WAIT
			// measure whatever the pooled connection last wrote, or
			// nothing (every replica at once). A write that always
			// replicates comes after theirs in the replication stream:
			// a replica that has it has them.
			m = pipe.Set(ctx, rw.mark, 1, 0)
			w = redis.NewIntCmd(ctx, "wait", rw.n, rw.timeout.Milliseconds())
			_ = pipe.Process(ctx, w)
		}
		if _, err := pipe.Exec(ctx); err != nil && (w == nil || w.Err() != err && m.Err() != err) {
			// (The WAIT's own error, or its mark's, a NOPERM say, is
			// its marked commands' below, not everyone's.)
			failUnsent(qs, err)
		}
		if w != nil && (m.Err() != nil || w.Err() != nil || w.Val() < int64(rw.n)) {
			notReplicated := fmt.Errorf("%w: %d of %d within %s", ErrNotReplicated, w.Val(), rw.n, rw.timeout)
			if err := cmp.Or(m.Err(), w.Err()); err != nil {
				notReplicated = fmt.Errorf("%w: %w", ErrNotReplicated, err)
			}
			for _, q := range qs {
				if q.wait && q.cmd.Err() == nil {
					q.cmd.SetErr(notReplicated)
				}
			}
		}
	}
	run(qs, false)
	var again []*queued
	for _, q := range qs {
		if q.again != nil && connClosed(q.cmd.Err()) {
			q.send, q.again = q.again, nil
			again = append(again, q)
		}
	}
	if len(again) > 0 {
		run(again, false)
	}
	var retry []*queued
	for _, q := range qs {
		if q.script && isNoScript(q.cmd.Err()) {
			retry = append(retry, q)
		}
	}
	if len(retry) > 0 {
		run(retry, true)
	}
}

// connClosed reports whether err is a connection's closing without an
// answer (not a timeout: a call that timed out may still run later).
func connClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// failUnsent gives err, the failure of a pipeline, to its commands when
// none has an error of its own: the pipeline never went out (a connection
// that failed its AUTH, say), and go-redis leaves its commands without a
// reply or an error, which would read as empty replies. An error a command
// has (a script's, say) is that command's alone.
func failUnsent(qs []*queued, err error) {
	for _, q := range qs {
		if q.cmd.Err() != nil {
			return
		}
	}
	for _, q := range qs {
		q.cmd.SetErr(err)
	}
}

// pending is one caller's command.
type pending struct {
	queued
	done chan struct{} // closed when cmd has its reply, or when this caller sends the next pipeline
	lead bool          // set before done is closed: this caller sends the next pipeline
}

// evalOnce sends q, a call of a oneShot, and returns its reply.
func (c *combiner) evalOnce(ctx context.Context, q queued) *redis.Cmd {
	p := &pending{queued: q}
	c.do(ctx, p)
	return p.cmd.(*redis.Cmd)
}

// oneShot is a Lua script whose calls go-redis never sends a second time.
// go-redis sends a command again when its connection failed without an
// answer (a reset, a read timeout; up to 3 times, and on Redis Cluster
// whatever the client's MaxRetries), though Redis may have run it: an
// admission run twice counts the first run's lease and places in the
// windows, and may refuse the request that holds them; an undo run twice
// gives back twice. A pipeline holding such a call is not sent again
// either: its calls fail, and the admitter follows them up itself (see
// canceller).
type oneShot struct{ src, sha string }

func newOneShot(src string) oneShot { return oneShot{src: src, sha: redis.NewScript(src).Hash()} }

// noRetry marks a command go-redis does not send again.
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

// queue queues a call of s on pipe, as EVAL with eval, else EVALSHA, and
// returns its reply.
func (s oneShot) queue(ctx context.Context, pipe redis.Pipeliner, eval bool, keys []string, args []any) *redis.Cmd {
	a := make([]any, 0, 3+len(keys)+len(args))
	if eval {
		a = append(a, "eval", s.src)
	} else {
		a = append(a, "evalsha", s.sha)
	}
	a = append(a, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	cmd := redis.NewCmd(ctx, a...)
	cmd.SetFirstKeyPos(3)
	_ = pipe.Process(ctx, noRetry{cmd})
	return cmd
}

// call is the queued call of s.
func (s oneShot) call(keys []string, args []any) queued {
	return queued{script: true, send: func(ctx context.Context, pipe redis.Pipeliner, eval bool) redis.Cmder {
		return s.queue(ctx, pipe, eval, keys, args)
	}}
}

// callOnce is the queued call of s that, when its connection closes
// without an answer, goes again with "1" after args: its second sending,
// which the script tells from the first (see admitLua). The args of the
// second are made only then.
func (s oneShot) callOnce(keys []string, args []any) queued {
	q := s.call(keys, args)
	q.again = func(ctx context.Context, pipe redis.Pipeliner, eval bool) redis.Cmder {
		return s.queue(ctx, pipe, eval, keys, append(args[:len(args):len(args)], "1"))
	}
	return q
}

// run calls s alone, as EVALSHA, then as EVAL if Redis has not cached it.
func (s oneShot) run(ctx context.Context, rdb redis.UniversalClient, keys []string, args ...any) *redis.Cmd {
	q := s.call(keys, args)
	execQueued(ctx, rdb, []*queued{&q}, replicaWait{})
	return q.cmd.(*redis.Cmd)
}

// zrem sends a ZREM and returns its reply.
func (c *combiner) zrem(ctx context.Context, key string, member string) *redis.IntCmd {
	p := &pending{queued: idempotent(queued{send: func(ctx context.Context, pipe redis.Pipeliner, _ bool) redis.Cmder {
		return pipe.ZRem(ctx, key, member)
	}})}
	c.do(ctx, p)
	return p.cmd.(*redis.IntCmd)
}

// do sends p's command, alone or with others, and returns once it has its
// reply.
func (c *combiner) do(ctx context.Context, p *pending) {
	c.mu.Lock()
	if c.busy {
		p.done = make(chan struct{})
		c.queue = append(c.queue, p)
		c.mu.Unlock()
		<-p.done
		if !p.lead {
			return
		}
		c.mu.Lock()
		batch := c.queue // p is its first command
		c.queue = nil
		c.mu.Unlock()
		c.send(ctx, batch)
		return
	}
	c.busy = true
	c.mu.Unlock()
	c.send(ctx, []*pending{p})
}

// send runs batch as one pipeline, wakes the callers whose commands it
// carried, and hands the next pipeline to the oldest waiting caller, if any.
func (c *combiner) send(ctx context.Context, batch []*pending) {
	qs := make([]*queued, len(batch))
	for i, p := range batch {
		qs[i] = &p.queued
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.callTimeout())
	execQueued(ctx, c.rdb, qs, replicaWait{})
	cancel()
	for _, p := range batch[1:] {
		close(p.done)
	}

	c.mu.Lock()
	if len(c.queue) == 0 {
		c.busy = false
		c.mu.Unlock()
		return
	}
	next := c.queue[0]
	c.mu.Unlock()
	next.lead = true
	close(next.done)
}
