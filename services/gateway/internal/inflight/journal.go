// Package inflight keeps a journal of the streams a gateway is relaying, so
// that a gateway killed mid-stream (SIGKILL, out of memory, a panic) still
// publishes, at its next start, an event for every stream it cut: what the
// stream had delivered by its last checkpoint, estimated.
//
// A request's own event is written to the outbox when it ends; the journal
// covers the time before. The gateway opens a stream's entry once the
// stream's first piece has gone to the client (with the event as far as it
// is known then: ids, key, model, reservation, a prompt estimate), adds a
// checkpoint every CheckpointEvery while the stream delivers (the completion
// text delivered since the last one, which the journal's writer counts with
// the tokenizer off the request path), and closes the entry once the
// request's own event is in the outbox. An entry still open at the next
// start is a stream the process did not finish: Open returns its event,
// with usage_source "estimated" and error "gateway_crashed", for the
// gateway to publish through its outbox before it serves.
//
// The journal is one file of JSON lines, inflight.jsonl, in the outbox's
// directory. Lines are appended by one writer goroutine, a batch per
// write(2); the file is fsynced every SyncInterval while it changes and
// rewritten with only the open entries once it passes RotateBytes. A torn
// last line (a crash in the middle of a write) is skipped at recovery.
//
// What it costs a crash: a stream's tokens since its last checkpoint
// (CheckpointEvery) and what the writer had not yet written (microseconds
// of records). A stream whose entry was closed in memory but not on disk
// when the process died is recovered although its own event is in the
// outbox; both carry the request id, so JetStream's duplicate window and
// the meter's idempotence count it once.
package inflight

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

const (
	// FileName is the journal's file in its directory.
	FileName = "inflight.jsonl"
	// CheckpointEvery is how often a delivering stream's progress is put
	// in the journal.
	CheckpointEvery = 500 * time.Millisecond
	// SyncInterval is how often the journal is fsynced while it changes.
	SyncInterval = time.Second
	// RotateBytes is the size past which the file is rewritten with only
	// the entries still open.
	RotateBytes = 8 << 20
	// MaxPendingText bounds the checkpoint text waiting for the writer;
	// past it a checkpoint is refused, and its text goes with the next.
	MaxPendingText = 8 << 20
	// ErrorCrashed is the error of a recovered stream's event.
	ErrorCrashed = "gateway_crashed"
)

// Checkpoint is where a stream stands.
type Checkpoint struct {
	// Text is completion text delivered since the stream's last accepted
	// checkpoint. The journal owns it once Progress accepts it.
	Text []byte
	// Uncounted is how many bytes of the stream's text, all told, no
	// checkpoint has carried (a word still arriving, text past the kept
	// bound); they are counted at the rate of the text that was.
	Uncounted int64
	// PromptTokens is the backend's prompt count, when PromptKnown.
	PromptTokens int64
	PromptKnown  bool
	// CompletionTokens is the backend's completion count, when it has
	// reported one (CompletionKnown); it stands over the text's count.
	CompletionTokens int64
	CompletionKnown  bool
	// CompletionBound, when not 0, is the most completion tokens the
	// engine can have made (the request's own cap times its
	// completions): the text's count, an estimate, is never more.
	CompletionBound int64
	// Latency is the time since the request started, TTFT its time to
	// first token.
	Latency, TTFT time.Duration
}

// Options tune a Journal.
type Options struct {
	// Count counts the tokens of a text (the gateway's tokenizer); nil
	// counts four bytes a token.
	Count  func(string) int
	Logger *slog.Logger
}

// state is a stream's standing as a checkpoint line carries it.
type state struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	PromptKnown      bool  `json:"prompt_known,omitempty"`
	CompletionTokens int64 `json:"completion_tokens"`
	LatencyMS        int64 `json:"latency_ms"`
	TTFTMS           int64 `json:"ttft_ms"`
}

// line is one line of the journal: an entry opened (Open, the event as far
// as it is known), a checkpoint (ID and At) or an entry closed (ID and
// Closed).
type line struct {
	Open   *events.RequestCompleted `json:"open,omitempty"`
	ID     string                   `json:"id,omitempty"`
	At     *state                   `json:"at,omitempty"`
	Closed bool                     `json:"closed,omitempty"`
}

type opKind uint8

const (
	opOpen opKind = iota
	opProgress
	opClose
)

type op struct {
	kind opKind
	id   string
	ev   *events.RequestCompleted
	cp   Checkpoint
}

// stream is the writer's record of an open entry.
type stream struct {
	open []byte // the entry's open line, for a rewrite
	at   []byte // its last checkpoint line, if any
	// counted is the tokens of the text counted so far, in countedBytes
	// bytes.
	counted, countedBytes int64
}

// Journal is the in-flight journal of one gateway. Open, Progress and
// Close are safe for concurrent use and never wait for I/O.
type Journal struct {
	dir, path string
	count     func(string) int
	log       *slog.Logger

	mu      sync.Mutex
	ops     []op
	pending int // bytes of checkpoint text in ops
	started bool
	closed  bool

	wake chan struct{}
	done chan struct{} // closed by Shut: the writer drains and stops
	quit chan struct{} // closed by the writer as it returns

	// rotateAt is RotateBytes (tests lower it).
	rotateAt int64

	// The writer's own.
	f        *os.File
	size     int64
	dirty    bool
	live     map[string]*stream
	buf      []byte
	lastWarn time.Time
}

// Open reads the journal in dir and returns it with the events of the
// entries a previous process left open, in the order they were opened.
// The file is left as it is until Start: publish the events first, so that
// a crash in between finds them again.
func Open(dir string, opts Options) (*Journal, []*events.RequestCompleted, error) {
	j := &Journal{
		dir:   dir,
		path:  filepath.Join(dir, FileName),
		count: opts.Count,
		log:   opts.Logger,
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		quit:  make(chan struct{}),
		live:  map[string]*stream{},

		rotateAt: RotateBytes,
	}
	if j.count == nil {
		j.count = func(s string) int { return (len(s) + 3) / 4 }
	}
	if j.log == nil {
		j.log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("inflight journal: %w", err)
	}
	f, err := os.Open(j.path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("inflight journal: %w", err)
	}
	defer f.Close()
	evs, bad, err := recoverEntries(f)
	if err != nil {
		return nil, nil, fmt.Errorf("inflight journal %s: %w", j.path, err)
	}
	if bad > 0 {
		j.log.Warn("in-flight journal: lines that could not be read were skipped; a stream they stood for is not billed",
			"path", j.path, "lines", bad)
	}
	return j, evs, nil
}

// maxLine bounds a journal line read back: the gateway writes none near
// it (an open line carries no request body), so a longer one is not the
// gateway's and is skipped without being held in memory whole.
const maxLine = 1 << 20

// recoverEntries reads a journal and returns the events of its open
// entries, and how many whole lines it could not use (not JSON, too long,
// an open line missing the event's request id, key id or time). A last
// line with no newline, the torn end of a crashed write, is skipped
// without being counted.
func recoverEntries(r io.Reader) ([]*events.RequestCompleted, int, error) {
	type entry struct {
		ev *events.RequestCompleted
		at *state
	}
	open := map[string]*entry{}
	var order []string
	bad := 0
	br := bufio.NewReaderSize(r, maxLine)
	for {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line past maxLine: skip to its end.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == nil || err == io.EOF {
				// Not the torn end of a line of the journal's: it
				// writes none this long.
				bad++
				if err == nil {
					continue
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, 0, err
		}
		if len(bytes.TrimSpace(b)) == 0 {
			continue // a blank line stands for nothing
		}
		var l line
		if json.Unmarshal(b, &l) != nil {
			bad++
			continue
		}
		switch {
		case l.Open != nil:
			ev := l.Open
			if ev.RequestID == "" || ev.KeyID == "" || ev.Timestamp.IsZero() {
				bad++
				continue
			}
			if _, dup := open[ev.RequestID]; !dup {
				order = append(order, ev.RequestID)
			}
			open[ev.RequestID] = &entry{ev: ev}
		case l.Closed:
			delete(open, l.ID)
		case l.At != nil:
			if e := open[l.ID]; e != nil {
				e.at = l.At
			}
		default:
			bad++
		}
	}
	var evs []*events.RequestCompleted
	for _, id := range order {
		e := open[id]
		if e == nil {
			continue // closed
		}
		delete(open, id) // an id in order twice (opened, closed, opened again) is one event
		ev := e.ev
		ev.UsageSource = events.UsageSourceEstimated
		ev.Error = ErrorCrashed
		ev.Usage.CompletionTokens = 0
		if a := e.at; a != nil {
			if a.PromptKnown {
				ev.Usage.PromptTokens = a.PromptTokens
			}
			ev.Usage.CompletionTokens = a.CompletionTokens
			ev.LatencyMS, ev.TTFTMS = a.LatencyMS, a.TTFTMS
		}
		ev.Usage.PromptTokens = clampCount(ev.Usage.PromptTokens)
		ev.Usage.CompletionTokens = clampCount(ev.Usage.CompletionTokens)
		ev.Usage.TotalTokens = ev.Usage.PromptTokens + ev.Usage.CompletionTokens
		evs = append(evs, ev)
	}
	return evs, bad, nil
}

func clampCount(n int64) int64 {
	return min(max(n, 0), events.MaxTokenCount)
}

// Start empties the journal file (the entries Open returned are published)
// and starts the writer.
func (j *Journal) Start() error {
	f, err := os.OpenFile(j.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("inflight journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("inflight journal: %w", err)
	}
	j.f = f
	j.mu.Lock()
	j.started = true
	j.mu.Unlock()
	go j.writeLoop()
	return nil
}

// Open opens the entry of a stream: ev is its event as far as it is known
// (Usage.PromptTokens an estimate). The journal owns ev from then on.
func (j *Journal) Open(ev *events.RequestCompleted) {
	j.put(op{kind: opOpen, id: ev.RequestID, ev: ev})
}

// Progress adds a checkpoint to the entry of stream id. It reports false
// when the writer is too far behind to take cp's text: the caller keeps
// the text for its next checkpoint.
func (j *Journal) Progress(id string, cp Checkpoint) bool {
	return j.put(op{kind: opProgress, id: id, cp: cp})
}

// Close closes the entry of stream id: its own event is in the outbox.
func (j *Journal) Close(id string) {
	j.put(op{kind: opClose, id: id})
}

// put queues o for the writer and wakes it. It reports false, queueing
// nothing, when the journal is not running or o's checkpoint text would
// take the text waiting past MaxPendingText.
func (j *Journal) put(o op) bool {
	j.mu.Lock()
	if !j.started || j.closed || j.pending+len(o.cp.Text) > MaxPendingText {
		j.mu.Unlock()
		return false
	}
	j.pending += len(o.cp.Text)
	j.ops = append(j.ops, o)
	j.mu.Unlock()
	j.signal()
	return true
}

func (j *Journal) signal() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// Shut stops the journal: the writer writes what is queued, and the file
// is emptied when no entry is open (every stream ended), else fsynced.
func (j *Journal) Shut() error {
	j.mu.Lock()
	if j.closed || !j.started {
		j.closed = true
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	close(j.done)
	<-j.quit
	var err error
	if len(j.live) == 0 {
		err = j.f.Truncate(0)
	}
	if serr := j.f.Sync(); err == nil {
		err = serr
	}
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeLoop writes queued operations, fsyncs while the file changes and
// rewrites it once it has grown past RotateBytes.
func (j *Journal) writeLoop() {
	defer close(j.quit)
	t := time.NewTicker(SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-j.wake:
			j.drain()
		case <-t.C:
			if j.dirty {
				j.dirty = false
				if err := j.f.Sync(); err != nil {
					j.warn("fsync", err)
				}
			}
		case <-j.done:
			j.drain()
			return
		}
	}
}

// drain takes the queued operations and writes their lines in one write.
func (j *Journal) drain() {
	j.mu.Lock()
	ops := j.ops
	j.ops, j.pending = nil, 0
	j.mu.Unlock()
	if len(ops) == 0 {
		return
	}
	j.buf = j.buf[:0]
	for i := range ops {
		j.apply(&ops[i])
	}
	if len(j.buf) > 0 {
		n, err := j.f.Write(j.buf)
		j.size += int64(n)
		j.dirty = true
		if err != nil {
			j.warn("write", err)
		}
	}
	if cap(j.buf) > 1<<20 {
		j.buf = nil
	}
	if j.size > j.rotateAt {
		if err := j.rotate(); err != nil {
			j.warn("rewrite", err)
		}
	}
}

// apply records o in the writer's state and appends its line to j.buf.
func (j *Journal) apply(o *op) {
	switch o.kind {
	case opOpen:
		// {"open":<the event>}, the event in its own encoding.
		b, err := o.ev.AppendJSON(append(make([]byte, 0, 1024), `{"open":`...))
		if err != nil {
			j.warn("encode", err)
			return
		}
		b = append(b, "}\n"...)
		j.live[o.id] = &stream{open: b}
		j.buf = append(j.buf, b...)
	case opProgress:
		s := j.live[o.id]
		if s == nil {
			return
		}
		cp := &o.cp
		if len(cp.Text) > 0 {
			s.counted += int64(j.count(string(cp.Text)))
			s.countedBytes += int64(len(cp.Text))
		}
		st := state{
			PromptTokens: cp.PromptTokens, PromptKnown: cp.PromptKnown,
			CompletionTokens: s.counted,
			LatencyMS:        cp.Latency.Milliseconds(), TTFTMS: cp.TTFT.Milliseconds(),
		}
		if cp.Uncounted > 0 {
			if s.countedBytes > 0 {
				st.CompletionTokens += int64(float64(cp.Uncounted) * float64(s.counted) / float64(s.countedBytes))
			} else {
				st.CompletionTokens += (cp.Uncounted + 3) / 4
			}
		}
		if cp.CompletionKnown {
			st.CompletionTokens = cp.CompletionTokens
		} else if cp.CompletionBound > 0 {
			st.CompletionTokens = min(st.CompletionTokens, cp.CompletionBound)
		}
		b, err := json.Marshal(line{ID: o.id, At: &st})
		if err != nil {
			j.warn("encode", err)
			return
		}
		b = append(b, '\n')
		s.at = b
		j.buf = append(j.buf, b...)
	case opClose:
		if _, ok := j.live[o.id]; !ok {
			return
		}
		delete(j.live, o.id)
		b, _ := json.Marshal(line{ID: o.id, Closed: true})
		j.buf = append(append(j.buf, b...), '\n')
	}
}

// rotate rewrites the journal with only its open entries: a new file,
// renamed over the old one.
func (j *Journal) rotate() error {
	var b bytes.Buffer
	for _, s := range j.live {
		b.Write(s.open)
		b.Write(s.at)
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := os.Rename(tmp, j.path); err != nil {
		f.Close()
		return err
	}
	_ = j.f.Close()
	j.f, j.size, j.dirty = f, int64(b.Len()), false
	return nil
}

// warn logs a failure of the journal's I/O, at most once a minute: the
// journal goes on (a stream is then recovered from what was written).
func (j *Journal) warn(what string, err error) {
	if now := time.Now(); now.Sub(j.lastWarn) >= time.Minute {
		j.lastWarn = now
		j.log.Error("in-flight journal: "+what+" failed; streams cut by a crash may go unbilled", "path", j.path, "err", err)
	}
}
