package ledger

import (
	"context"
	"sync"

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
// its cancellation, so one client going away fails nobody else's command;
// go-redis's read and write timeouts bound it.
type combiner struct {
	rdb redis.UniversalClient

	mu    sync.Mutex
	busy  bool       // a pipeline is in flight, or its sender is being woken
	queue []*pending // commands for the next pipeline, oldest first
}

// pending is one caller's command.
type pending struct {
	cmd redis.Cmder
	// script is set when cmd is an EVALSHA of it: a NOSCRIPT reply (a
	// server that has not cached the script) sends it again as EVAL.
	script *redis.Script
	keys   []string
	args   []any

	done chan struct{} // closed when cmd has its reply, or when this caller sends the next pipeline
	lead bool          // set before done is closed: this caller sends the next pipeline
}

// evalSha queues an EVALSHA of script, falling back to EVAL, and returns
// its reply.
func (c *combiner) evalSha(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	argv := make([]any, 0, 3+len(keys)+len(args))
	argv = append(argv, "evalsha", s.Hash(), len(keys))
	for _, k := range keys {
		argv = append(argv, k)
	}
	argv = append(argv, args...)
	p := &pending{cmd: redis.NewCmd(ctx, argv...), script: s, keys: keys, args: args}
	c.do(ctx, p)
	return p.cmd.(*redis.Cmd) // the EVAL's, if it was sent again
}

// zrem queues a ZREM and returns its reply.
func (c *combiner) zrem(ctx context.Context, key string, member string) *redis.IntCmd {
	cmd := redis.NewIntCmd(ctx, "zrem", key, member)
	c.do(ctx, &pending{cmd: cmd})
	return cmd
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
	ctx = context.WithoutCancel(ctx)
	c.exec(ctx, batch, false)
	var retry []*pending
	for _, p := range batch {
		if p.script != nil && isNoScript(p.cmd.Err()) {
			retry = append(retry, p)
		}
	}
	if len(retry) > 0 {
		c.exec(ctx, retry, true)
	}
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

// exec sends cmds in one pipeline; with eval, as EVAL of their scripts. Each
// command keeps its own reply or error.
func (c *combiner) exec(ctx context.Context, batch []*pending, eval bool) {
	pipe := c.rdb.Pipeline()
	for _, p := range batch {
		if eval {
			p.cmd = p.script.Eval(ctx, pipe, p.keys, p.args...)
		} else {
			_ = pipe.Process(ctx, p.cmd)
		}
	}
	_, _ = pipe.Exec(ctx)
}
