// Package publish is the gateway's event publisher. Every RequestCompleted
// goes through a durable on-disk outbox before it is published to JetStream,
// so that no event is lost while NATS is unreachable or the gateway
// restarts.
//
// The path of one event:
//
//  1. Publish hands the event to a bounded queue and returns; when the queue
//     is full it encodes the event and appends it to the outbox itself.
//  2. The writer goroutine encodes queued events and appends them to the
//     outbox, one write(2) per batch; it fsyncs the outbox every
//     SyncInterval.
//  3. The sender goroutine reads the outbox in order and publishes with
//     PublishMsgAsync (header Nats-Msg-Id = request_id, subject
//     events.Subject(key_id)), keeping at most MaxInFlight acks
//     outstanding. An event leaves the outbox once JetStream has acked it
//     and every event before it.
//  4. When a publish fails or its ack times out, the sender goes back to the
//     first unacknowledged event and publishes from there again, one at a
//     time with backoff until one succeeds, then widening the window again.
//     New events queue behind the backlog, so events reach the stream in
//     outbox order. (Resending may repeat events that had reached the
//     stream; the stream's duplicate window and the meter's idempotence by
//     request id absorb them.)
//
// Durability: an event survives a process crash once the writer has
// appended it, normally microseconds after Publish; only the events still in
// the hand-off queue die with the process. It survives a machine crash once
// fsynced (at most SyncInterval later). On start, New republishes every
// event after the last acknowledged position it finds on disk.
//
// Bounds: the outbox files are bounded by MaxOutboxBytes. Past that, events
// wait in memory, in order, up to MaxMemoryBytes, and move to disk as acks
// free room; an ERROR line is logged once per WarnInterval while this lasts.
// An event arriving when both are full is dropped and counted in
// llmproxy_events_dropped_total. Close writes the events held in memory to
// disk even past MaxOutboxBytes, so a clean shutdown drops nothing.
//
// Size: an event larger than the connected server's max_payload (less room
// for its headers and for a dead letter wrapping it) would be refused on
// every retry and hold back every event after it. The sender publishes it
// with its largest content cut instead — the request body replaced by null,
// the captured response shortened — and marked "truncated": true; usage,
// ids and every other field are kept, so the meter counts it. Such events
// are counted in llmproxy_events_truncated_total and logged at WARN. The
// outbox keeps the event whole, so a server with a larger max_payload gets
// it whole. An event that cannot fit even so (it would take kilobytes of
// Lua tags) is dropped, counted and logged at ERROR.
package publish

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

// maxWriteBatch is the most events the writer encodes into one write(2).
const maxWriteBatch = 256

// ErrClosed is returned by Close when the publisher was already closed.
var ErrClosed = errors.New("publisher closed")

// Publisher publishes RequestCompleted events through a durable outbox. It
// is safe for concurrent use. Only one Publisher may use a directory at a
// time; New fails while another holds it (an flock(2) on the ack file).
type Publisher struct {
	js   jetstream.JetStream
	opts Options
	log  *slog.Logger
	m    *metrics
	ob   *outbox

	// mu guards closed against Publish: Publish holds it shared while it
	// hands an event over, Close exclusively to stop new ones.
	mu     sync.RWMutex
	closed bool
	in     chan *events.RequestCompleted

	wake       chan struct{} // new records in the outbox; capacity 1
	closing    chan struct{} // closed by Close: the writer drains and stops
	writerDone chan struct{}
	drain      chan struct{} // closed once the writer is done
	abort      chan struct{} // closed when Close's deadline passes
	senderDone chan struct{}
	closeOnce  sync.Once

	// stalledSince is when publishing started failing without an ack
	// since (unix nanoseconds; 0 while publishes go through), stallErr
	// the last failure's error.
	stalledSince atomic.Int64
	stallErr     atomic.Pointer[string]

	// dropMu guards the times of the last log lines about dropped and
	// truncated events.
	dropMu       sync.Mutex
	lastDropLog  time.Time
	lastTruncLog time.Time
}

// New opens (or creates) the outbox in dir, queues for publishing whatever
// it holds that was never acknowledged, and starts the publisher's
// goroutines. js should be built with a reconnecting connection; the
// publisher never closes it.
func New(js jetstream.JetStream, dir string, opts Options) (*Publisher, error) {
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("publish: register metrics: %w", err)
	}
	ob, err := openOutbox(dir, opts, m)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	p := &Publisher{
		js:         js,
		opts:       opts,
		log:        opts.Logger,
		m:          m,
		ob:         ob,
		in:         make(chan *events.RequestCompleted, opts.QueueSize),
		wake:       make(chan struct{}, 1),
		closing:    make(chan struct{}),
		writerDone: make(chan struct{}),
		drain:      make(chan struct{}),
		abort:      make(chan struct{}),
		senderDone: make(chan struct{}),
	}
	go p.writeLoop()
	go p.sendLoop()
	return p, nil
}

// Publish queues ev for publishing and returns without waiting for I/O in
// the common case. The publisher owns ev from then on: the caller must not
// modify it. When the hand-off queue is full, Publish encodes ev and appends
// it to the outbox on the caller's goroutine (one write(2)) rather than
// block on the queue or drop the event. After Close, events are dropped and
// counted.
func (p *Publisher) Publish(ev *events.RequestCompleted) {
	if ev == nil {
		return
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		p.dropped(1, "publisher closed", ev.RequestID)
		return
	}
	select {
	case p.in <- ev:
		return
	default:
	}
	buf, ok := p.encode(nil, ev)
	if !ok {
		return
	}
	p.store(buf, []int{len(buf)})
}

// encode appends ev's outbox record to buf. An event that cannot be
// encoded is dropped and counted. An event too large for an outbox record
// (larger than any NATS server takes) is cut to fit, as the sender does
// for a server's max_payload.
func (p *Publisher) encode(buf []byte, ev *events.RequestCompleted) ([]byte, bool) {
	subject := events.Subject(ev.KeyID)
	start := len(buf)
	buf, err := appendRecordWith(buf, subject, ev.RequestID, ev.AppendMarshal)
	if err != nil {
		p.dropped(1, "encode event: "+err.Error(), ev.RequestID)
		return buf, false
	}
	if n := len(buf) - start; n > recordHeaderSize+maxRecordBody {
		data := bytes.Clone(buf[start+recordSize(subject, ev.RequestID, nil):])
		buf = buf[:start]
		limit := len(data) - (n - recordHeaderSize - maxRecordBody)
		fitted, err := fitEvent(data, limit)
		if err != nil {
			p.dropped(1, "larger than an outbox record: "+err.Error(), ev.RequestID)
			return buf, false
		}
		p.truncated(ev.RequestID, len(data), len(fitted), "max_outbox_record", int64(maxRecordBody))
		buf = appendRecord(buf, subject, ev.RequestID, fitted)
	}
	return buf, true
}

// PublishDurable is Publish for the moment a reply is about to complete: it
// encodes ev and appends it to the outbox on the caller's goroutine, so once
// it returns a process killed at any instant still publishes ev at restart.
// It costs the caller an encode and a write(2); it never waits for NATS.
func (p *Publisher) PublishDurable(ev *events.RequestCompleted) {
	if p.AppendDurable(ev) {
		p.Wake()
	}
}

// AppendDurable is PublishDurable without waking the sender: the caller
// calls Wake once it can spare the cost (the gateway does so after the
// reply's last bytes are written, so that starting the sender, and the
// thread it may wake, is not part of the reply's latency). It reports
// whether ev was appended; until Wake, an appended event waits for the
// sender's next wake by anyone.
func (p *Publisher) AppendDurable(ev *events.RequestCompleted) bool {
	if ev == nil {
		return false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		p.dropped(1, "publisher closed", ev.RequestID)
		return false
	}
	buf, ok := p.encode(nil, ev)
	if !ok {
		return false
	}
	p.appendRecords(buf, []int{len(buf)})
	return true
}

// Flush puts every event appended so far on disk: those held in memory
// past the outbox's bound are written, and the files fsynced. For a caller
// that must know its events would survive a power loss before it goes on.
func (p *Publisher) Flush() error { return p.ob.flush() }

// Wake tells the sender that the outbox has new records.
func (p *Publisher) Wake() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// store appends encoded records to the outbox and wakes the sender.
func (p *Publisher) store(buf []byte, ends []int) {
	p.appendRecords(buf, ends)
	p.Wake()
}

// appendRecords appends encoded records to the outbox, counting those that
// found no room.
func (p *Publisher) appendRecords(buf []byte, ends []int) {
	if n := p.ob.append(buf, ends); n > 0 {
		p.dropped(0, "outbox and memory overflow full", "")
	}
}

// dropped counts n dropped events and logs why, at most once per
// WarnInterval.
func (p *Publisher) dropped(n int, reason, requestID string) {
	if n > 0 {
		p.m.dropped.Add(float64(n))
	}
	if !p.logDue(&p.lastDropLog) {
		return
	}
	p.log.Error("event dropped: it will not be published", "reason", reason, "request_id", requestID)
}

// logDue reports whether a line whose last one was logged at *last may be
// logged now, at most one per WarnInterval, and if so moves *last to now.
// last is guarded by dropMu.
func (p *Publisher) logDue(last *time.Time) bool {
	p.dropMu.Lock()
	defer p.dropMu.Unlock()
	now := time.Now()
	if now.Sub(*last) < p.opts.WarnInterval {
		return false
	}
	*last = now
	return true
}

// writeLoop moves queued events into the outbox and syncs it on every
// tick. It owns the encoding buffer.
func (p *Publisher) writeLoop() {
	defer close(p.writerDone)
	t := time.NewTicker(p.opts.SyncInterval)
	defer t.Stop()
	var (
		buf  []byte
		ends []int
	)
	write := func(ev *events.RequestCompleted) {
		buf, ends = buf[:0], ends[:0]
		for {
			var ok bool
			if buf, ok = p.encode(buf, ev); ok {
				ends = append(ends, len(buf))
			}
			if len(ends) >= maxWriteBatch {
				break
			}
			more := false
			select {
			case ev = <-p.in:
				more = true
			default:
			}
			if !more {
				break
			}
		}
		if len(ends) > 0 {
			p.store(buf, ends)
		}
		if cap(buf) > 4<<20 {
			buf = nil // do not pin a buffer grown by one huge batch
		}
	}
	for {
		select {
		case ev := <-p.in:
			write(ev)
		case now := <-t.C:
			if p.ob.sync(now) {
				select {
				case p.wake <- struct{}{}:
				default:
				}
			}
		case <-p.abort:
			return
		case <-p.closing:
			for {
				select {
				case ev := <-p.in:
					write(ev)
					continue
				default:
				}
				return
			}
		}
	}
}

// Close stops accepting events, writes every queued event to the outbox,
// keeps publishing until the outbox is empty, NATS fails, or ctx is done,
// waiting for the acks in flight, then fsyncs and closes the outbox.
// Whatever was not acknowledged is published by the next Publisher on the
// same directory. Close must be called once; later calls return ErrClosed.
func (p *Publisher) Close(ctx context.Context) error {
	err := ErrClosed
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.closing)
		<-p.writerDone
		close(p.drain)
		select {
		case <-p.senderDone:
		case <-ctx.Done():
			close(p.abort)
			<-p.senderDone
		}
		err = p.ob.close()
		if n := p.ob.depth(); n > 0 {
			p.log.Info("event publisher closed with unpublished events in the outbox", "dir", p.ob.dir, "events", n)
		}
	})
	return err
}

// Depth returns the number of events accepted and not yet acknowledged by
// JetStream: in the hand-off queue, in the outbox and waiting in memory.
func (p *Publisher) Depth() int64 { return int64(len(p.in)) + p.ob.depth() }

// OutboxError is the outbox's write failure while events wait in memory
// for it (a full or read-only disk), or nil: those events would die with
// the process, so the gateway is not ready meanwhile.
func (p *Publisher) OutboxError() error { return p.ob.writeError() }

// Stalled reports how long publishing has failed with no acknowledgement
// since, and the last failure; 0 while publishes go through. Events wait in
// the outbox meanwhile: a NATS that is down, or one that answers but cannot
// store them (a server whose store write failed).
func (p *Publisher) Stalled() (time.Duration, string) {
	since := p.stalledSince.Load()
	if since == 0 {
		return 0, ""
	}
	msg := ""
	if e := p.stallErr.Load(); e != nil {
		msg = *e
	}
	return time.Since(time.Unix(0, since)), msg
}
