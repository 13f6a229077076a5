package publish

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// startNATS starts an embedded JetStream server storing in storeDir on port
// (-1 picks one).
func startNATS(t testing.TB, storeDir string, port int) *server.Server {
	t.Helper()
	return startNATSMaxPayload(t, storeDir, port, 0)
}

// startNATSMaxPayload is startNATS with the server's max_payload set (0:
// the server's default, 1 MB).
func startNATSMaxPayload(t testing.TB, storeDir string, port int, maxPayload int32) *server.Server {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		MaxPayload: maxPayload,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return srv
}

// connect returns a JetStream context on a connection that reconnects for
// ever, with the event streams in place.
func connect(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	js := connectBare(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return js
}

// connectBare is connect without the event streams.
func connectBare(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func event(i int) *events.RequestCompleted {
	return &events.RequestCompleted{
		RequestID: fmt.Sprintf("req-%06d", i),
		KeyID:     fmt.Sprintf("key%d", i%3),
		Model:     "m",
		Timestamp: time.Unix(1700000000, 0).UTC(),
		Usage:     events.Usage{PromptTokens: 10, CompletionTokens: int64(i), TotalTokens: 10 + int64(i)},
	}
}

// streamIDs returns the Nats-Msg-Id of every message in the event stream,
// in stream order, checking that each matches its body's request id and
// subject.
func streamIDs(t testing.TB, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	var ids []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get msg %d: %v", seq, err)
		}
		ev, err := events.Unmarshal(m.Data)
		if err != nil {
			t.Fatalf("msg %d: %v", seq, err)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); id != ev.RequestID {
			t.Fatalf("msg %d: Nats-Msg-Id %q, request_id %q", seq, id, ev.RequestID)
		}
		if m.Subject != events.Subject(ev.KeyID) {
			t.Fatalf("msg %d: subject %q, want %q", seq, m.Subject, events.Subject(ev.KeyID))
		}
		ids = append(ids, ev.RequestID)
	}
	return ids
}

// streamMsgs reads the first n messages of the event stream. (An ordered
// consumer gets them as they are; GetMsg would decode each from JSON.)
func streamMsgs(t testing.TB, js jetstream.JetStream, n int) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("message %d: %v", len(out)+1, err)
		}
		out = append(out, m)
	}
	return out
}

func streamCount(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

// checkIDs fails unless ids are req-from .. req-(to-1) in order.
func checkIDs(t testing.TB, ids []string, from, to int) {
	t.Helper()
	if len(ids) != to-from {
		t.Fatalf("got %d events, want %d", len(ids), to-from)
	}
	for i, id := range ids {
		if want := event(from + i).RequestID; id != want {
			t.Fatalf("event %d is %s, want %s", i, id, want)
		}
	}
}

// flakyJS fails every async publish while fail is set.
type flakyJS struct {
	jetstream.JetStream
	fail atomic.Bool
}

var errFlaky = errors.New("nats unreachable")

func (f *flakyJS) Conn() *nats.Conn {
	if f.JetStream == nil {
		return nil
	}
	return f.JetStream.Conn()
}

func (f *flakyJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if f.fail.Load() || f.JetStream == nil {
		return nil, errFlaky
	}
	return f.JetStream.PublishMsgAsync(m, opts...)
}

func testOptions(reg prometheus.Registerer) Options {
	return Options{
		Registerer:   reg,
		SyncInterval: 10 * time.Millisecond,
		AckTimeout:   2 * time.Second,
		RetryInitial: 10 * time.Millisecond,
		RetryMax:     100 * time.Millisecond,
	}
}

func newPublisher(t testing.TB, js jetstream.JetStream, dir string, o Options) *Publisher {
	t.Helper()
	p, err := New(js, dir, o)
	if err != nil {
		t.Fatalf("new publisher: %v", err)
	}
	return p
}

func closePublisher(t testing.TB, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// crash stops p's goroutines as a killed process would: nothing queued is
// drained, nothing is synced, the ack mark is whatever was last written.
func crash(p *Publisher) {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.abort)
	<-p.writerDone
	<-p.senderDone
	p.ob.mu.Lock()
	_ = p.ob.closeFiles()
	p.ob.mu.Unlock()
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPublishOncePerEventWithMsgID(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	p := newPublisher(t, js, dir, testOptions(reg))

	const n = 300
	for i := range n {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "all events acked", func() bool {
		return testutil.ToFloat64(p.m.published) == n && p.Depth() == 0
	})
	checkIDs(t, streamIDs(t, js), 0, n)
	waitFor(t, 5*time.Second, "outbox emptied", func() bool {
		return len(segmentFiles(t, dir)) == 0 && testutil.ToFloat64(p.m.bytes) == 0
	})
	closePublisher(t, p)
	if got := testutil.ToFloat64(p.m.dropped); got != 0 {
		t.Fatalf("dropped %v events", got)
	}
}

func TestOutageRepublishesInOrder(t *testing.T) {
	store := t.TempDir()
	srv := startNATS(t, store, -1)
	js := connect(t, srv.ClientURL())
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	p := newPublisher(t, js, dir, testOptions(reg))
	defer closePublisher(t, p)

	for i := range 100 {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "first events acked", func() bool { return p.Depth() == 0 && streamCount(t, js) == 100 })

	port := clientPort(t, srv)
	srv.Shutdown()
	srv.WaitForShutdown()

	for i := 100; i < 600; i++ {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "events held in the outbox", func() bool { return p.ob.depth() == 500 })
	if len(segmentFiles(t, dir)) == 0 {
		t.Fatal("no outbox segment while NATS is down")
	}

	srv = startNATS(t, store, port)
	defer srv.Shutdown()
	waitFor(t, 20*time.Second, "backlog published", func() bool { return p.Depth() == 0 })
	checkIDs(t, streamIDs(t, js), 0, 600)
	waitFor(t, 5*time.Second, "outbox emptied", func() bool { return len(segmentFiles(t, dir)) == 0 })
}

func clientPort(t testing.TB, srv *server.Server) int {
	t.Helper()
	var port int
	if _, err := fmt.Sscanf(srv.ClientURL(), "nats://127.0.0.1:%d", &port); err != nil {
		t.Fatalf("client url %q: %v", srv.ClientURL(), err)
	}
	return port
}

func TestCloseKeepsPendingForNextPublisher(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	dir := t.TempDir()

	down := &flakyJS{}
	p := newPublisher(t, down, dir, testOptions(nil))
	for i := range 50 {
		p.Publish(event(i))
	}
	start := time.Now()
	closePublisher(t, p)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v with NATS down", d)
	}
	if got := p.Depth(); got != 50 {
		t.Fatalf("closed with %d events in the outbox, want 50", got)
	}
	p.Publish(event(99)) // after Close: dropped and counted, no panic
	if got := testutil.ToFloat64(p.m.dropped); got != 1 {
		t.Fatalf("dropped = %v after Close, want 1", got)
	}

	p2 := newPublisher(t, js, dir, testOptions(nil))
	defer closePublisher(t, p2)
	waitFor(t, 10*time.Second, "pending events published", func() bool { return p2.Depth() == 0 && streamCount(t, js) == 50 })
	checkIDs(t, streamIDs(t, js), 0, 50)
}

// bigEvent is event(i) with a request body of about n bytes.
func bigEvent(i, n int) *events.RequestCompleted {
	ev := event(i)
	ev.RequestBody = []byte(`{"prompt":"` + strings.Repeat("x", n) + `"}`)
	return ev
}

// TestEventsLargerThanReadLimit publishes events larger than the sender's
// read limit, alone and among small ones, both from a backlog read with a
// full window at start and as they come.
func TestEventsLargerThanReadLimit(t *testing.T) {
	srv := startNATSMaxPayload(t, t.TempDir(), -1, 8<<20)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	dir := t.TempDir()

	big := map[int]int{0: 2400 << 10, 3: readLimit + 1, 4: readLimit + 1000, 9: readLimit + 10}
	ev := func(i int) *events.RequestCompleted {
		if n, ok := big[i]; ok {
			return bigEvent(i, n)
		}
		return event(i)
	}
	// A backlog left by a publisher that could not reach NATS.
	down := newPublisher(t, &flakyJS{}, dir, testOptions(nil))
	for i := range 10 {
		down.Publish(ev(i))
	}
	closePublisher(t, down)

	p := newPublisher(t, js, dir, testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)
	waitFor(t, 20*time.Second, "backlog published", func() bool { return p.Depth() == 0 && streamCount(t, js) == 10 })
	big[12], big[13], big[17] = readLimit+100, 3<<19, readLimit
	for i := 10; i < 20; i++ {
		p.Publish(ev(i))
	}
	waitFor(t, 20*time.Second, "events published", func() bool { return p.Depth() == 0 && streamCount(t, js) == 20 })
	for i, m := range streamMsgs(t, js, 20) {
		want, _ := ev(i).Marshal()
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != ev(i).RequestID || !bytes.Equal(m.Data(), want) {
			t.Fatalf("message %d: %s, %d bytes; want event %s, %d bytes", i+1, id, len(m.Data()), ev(i).RequestID, len(want))
		}
	}
	if got := testutil.ToFloat64(p.m.dropped); got != 0 {
		t.Fatalf("dropped %v events", got)
	}
}

// TestEventOverMaxPayload: an event larger than the server's max_payload
// goes out with its content cut and marked, its accounting intact, and the
// events after it follow; one that cannot be cut to fit is dropped and
// counted rather than blocking them.
func TestEventOverMaxPayload(t *testing.T) {
	srv := startNATSMaxPayload(t, t.TempDir(), -1, 64<<10)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	p := newPublisher(t, js, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)

	huge := bigEvent(1, 120<<10)
	huge.Response = &events.CapturedResponse{Content: strings.Repeat("r", 30<<10)}
	unfit := event(2)
	unfit.Tags = map[string]string{"t": strings.Repeat("t", 100<<10)}
	p.Publish(event(0))
	p.Publish(huge)
	p.Publish(unfit)
	for i := 3; i < 10; i++ {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "events published", func() bool { return p.Depth() == 0 && streamCount(t, js) == 9 })

	msgs := streamMsgs(t, js, 9)
	for i, m := range msgs {
		want := i
		if i >= 2 {
			want++ // unfit was dropped
		}
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != event(want).RequestID {
			t.Fatalf("message %d is %s, want %s", i+1, id, event(want).RequestID)
		}
	}
	got, err := events.Unmarshal(msgs[1].Data())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Truncated || string(got.RequestBody) != "null" || got.Response == nil || got.Response.Content != huge.Response.Content {
		t.Fatalf("oversized event: truncated %v, request_body %.20s, response kept %v", got.Truncated, got.RequestBody, got.Response != nil && got.Response.Content == huge.Response.Content)
	}
	if got.Usage != huge.Usage || got.KeyID != huge.KeyID || got.Timestamp != huge.Timestamp {
		t.Fatalf("oversized event lost its accounting: %+v", got)
	}
	if n := testutil.ToFloat64(p.m.truncated); n != 1 {
		t.Errorf("truncated = %v, want 1", n)
	}
	if n := testutil.ToFloat64(p.m.dropped); n != 1 {
		t.Errorf("dropped = %v, want 1", n)
	}
	if n := testutil.ToFloat64(p.m.published); n != 9 {
		t.Errorf("published = %v, want 9", n)
	}
}

// limitJS refuses, as a client whose server changed would, every message
// larger than limit with nats.ErrMaxPayload.
type limitJS struct {
	jetstream.JetStream
	limit int
}

func (l *limitJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if len(m.Data) > l.limit {
		return nil, nats.ErrMaxPayload
	}
	return l.JetStream.PublishMsgAsync(m, opts...)
}

// TestMaxPayloadErrorNotRetried: a publish refused for its size is not
// retried for ever; the events after it are published.
func TestMaxPayloadErrorNotRetried(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	p := newPublisher(t, &limitJS{JetStream: js, limit: 4096}, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)

	p.Publish(bigEvent(0, 8192))
	for i := 1; i < 5; i++ {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "events published", func() bool { return p.Depth() == 0 && streamCount(t, js) == 4 })
	checkIDs(t, streamIDs(t, js), 1, 5)
	if n := testutil.ToFloat64(p.m.dropped); n != 1 {
		t.Errorf("dropped = %v, want 1", n)
	}
}

func TestCrashRepublishesUnacked(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	dir := t.TempDir()

	fj := &flakyJS{JetStream: js}
	p := newPublisher(t, fj, dir, testOptions(nil))
	for i := range 20 {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "first events acked", func() bool { return p.Depth() == 0 && streamCount(t, js) == 20 })
	fj.fail.Store(true)
	for i := 20; i < 70; i++ {
		p.Publish(event(i))
	}
	// A crash loses what is still in the hand-off queue; wait until the
	// events are in the outbox.
	waitFor(t, 10*time.Second, "events in the outbox", func() bool { return p.ob.depth() == 50 })
	crash(p)

	p2 := newPublisher(t, js, dir, testOptions(nil))
	defer closePublisher(t, p2)
	waitFor(t, 10*time.Second, "unacked events republished", func() bool {
		return p2.Depth() == 0 && streamCount(t, js) == 70
	})
	checkIDs(t, streamIDs(t, js), 0, 70)
}

// TestCrashRepublishesRecentlyAcked: a JetStream server acks before its
// file store has written the message, so a server that dies with the
// gateway (the embedded one) can lose what it just acked. Events acked in
// the last moments before a crash are therefore published again at restart;
// the stream's duplicate window drops the copies it kept.
func TestCrashRepublishesRecentlyAcked(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	dir := t.TempDir()

	p := newPublisher(t, js, dir, testOptions(nil))
	for i := range 20 {
		p.Publish(event(i))
	}
	waitFor(t, 10*time.Second, "events acked", func() bool { return p.Depth() == 0 && streamCount(t, js) == 20 })
	crash(p)

	// A fresh stream stands for a server that lost the acked messages.
	fresh := startNATS(t, t.TempDir(), -1)
	defer fresh.Shutdown()
	js2 := connect(t, fresh.ClientURL())
	p2 := newPublisher(t, js2, dir, testOptions(nil))
	defer closePublisher(t, p2)
	waitFor(t, 10*time.Second, "recently acked events republished", func() bool {
		return p2.Depth() == 0 && streamCount(t, js2) == 20
	})
	checkIDs(t, streamIDs(t, js2), 0, 20)
}

func TestOutboxBound(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	dir := t.TempDir()

	fj := &flakyJS{JetStream: js}
	fj.fail.Store(true)
	o := testOptions(prometheus.NewRegistry())
	o.MaxOutboxBytes = 32 << 10
	o.MaxMemoryBytes = 8 << 10
	p := newPublisher(t, fj, dir, o)
	defer closePublisher(t, p)

	const n = 1000
	for i := range n {
		p.Publish(event(i))
	}
	var dropped float64
	waitFor(t, 10*time.Second, "every event stored or dropped", func() bool {
		dropped = testutil.ToFloat64(p.m.dropped)
		return float64(p.ob.depth())+dropped == n
	})
	if dropped == 0 {
		t.Fatal("nothing dropped past both bounds")
	}
	var onDisk int64
	for _, f := range segmentFiles(t, dir) {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		onDisk += st.Size()
	}
	if onDisk > o.MaxOutboxBytes {
		t.Fatalf("outbox holds %d bytes, bound %d", onDisk, o.MaxOutboxBytes)
	}
	if got := testutil.ToFloat64(p.m.bytes); int64(got) != onDisk {
		t.Fatalf("outbox_bytes gauge %v, files %d", got, onDisk)
	}
	p.ob.mu.Lock()
	inMem, memBytes := len(p.ob.mem), p.ob.memBytes
	p.ob.mu.Unlock()
	if inMem == 0 || memBytes > o.MaxMemoryBytes {
		t.Fatalf("%d events, %d bytes in memory; want some, at most %d bytes", inMem, memBytes, o.MaxMemoryBytes)
	}

	// NATS returns: everything kept, disk and memory, goes out in order.
	kept := n - int(dropped)
	fj.fail.Store(false)
	waitFor(t, 20*time.Second, "kept events published", func() bool { return p.Depth() == 0 })
	ids := streamIDs(t, js)
	checkIDs(t, ids, 0, kept)
}

func TestSecondPublisherOnDirFails(t *testing.T) {
	dir := t.TempDir()
	p := newPublisher(t, &flakyJS{}, dir, testOptions(nil))
	if _, err := New(&flakyJS{}, dir, testOptions(nil)); err == nil {
		t.Fatal("second publisher opened a directory in use")
	}
	closePublisher(t, p)
	p2 := newPublisher(t, &flakyJS{}, dir, testOptions(nil))
	closePublisher(t, p2)
}

// stampingJS records when each async publish was made.
type stampingJS struct {
	jetstream.JetStream
	mu    sync.Mutex
	times []time.Time
}

func (s *stampingJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	s.mu.Lock()
	s.times = append(s.times, time.Now())
	s.mu.Unlock()
	return s.JetStream.PublishMsgAsync(m, opts...)
}

func (s *stampingJS) stamps() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.times)
}

// TestLingerSendsEventsTogether: events that reach the outbox while the
// sender lingers are published together once the linger ends, and an
// event is in the outbox (durable) the moment PublishDurable returns.
func TestLingerSendsEventsTogether(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := &stampingJS{JetStream: connect(t, srv.ClientURL())}
	o := testOptions(prometheus.NewRegistry())
	o.Linger = 400 * time.Millisecond
	p := newPublisher(t, js, t.TempDir(), o)
	defer closePublisher(t, p)
	time.Sleep(50 * time.Millisecond) // the sender has found the outbox empty and waits

	first := time.Now()
	const n = 5
	for i := range n {
		p.PublishDurable(event(i))
		if got := p.ob.depth(); got != int64(i+1) {
			t.Fatalf("after PublishDurable %d the outbox holds %d events, want %d", i, got, i+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := js.stamps(); len(got) != 0 && got[0].Sub(first) < 100*time.Millisecond {
		t.Fatalf("published %v after the first event, inside the linger", got[0].Sub(first))
	}
	waitFor(t, 10*time.Second, "all events acked", func() bool {
		return testutil.ToFloat64(p.m.published) == n && p.Depth() == 0
	})
	got := js.stamps()
	if len(got) != n {
		t.Fatalf("%d publishes, want %d", len(got), n)
	}
	if d := got[0].Sub(first); d < 300*time.Millisecond {
		t.Fatalf("first publish %v after the first event, want the 400ms linger", d)
	}
	if spread := got[n-1].Sub(got[0]); spread > 100*time.Millisecond {
		t.Fatalf("the %d events went out over %v, want one batch", n, spread)
	}
	checkIDs(t, streamIDs(t, js), 0, n)
}

// TestNoLingerPublishesAtOnce: with Linger negative an event goes out as
// soon as it is in the outbox.
func TestNoLingerPublishesAtOnce(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := &stampingJS{JetStream: connect(t, srv.ClientURL())}
	o := testOptions(prometheus.NewRegistry())
	o.Linger = -1
	p := newPublisher(t, js, t.TempDir(), o)
	defer closePublisher(t, p)
	first := time.Now()
	p.PublishDurable(event(0))
	waitFor(t, 10*time.Second, "event acked", func() bool { return testutil.ToFloat64(p.m.published) == 1 })
	if d := js.stamps()[0].Sub(first); d > 200*time.Millisecond {
		t.Fatalf("published %v after PublishDurable with linger off", d)
	}
}

// TestStalledWhileNothingIsAcked: Stalled counts from the first failed
// publish for as long as none is acknowledged, with the last error, and is
// 0 again once one is.
func TestStalledWhileNothingIsAcked(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := &flakyJS{JetStream: connect(t, srv.ClientURL())}
	p := newPublisher(t, js, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)
	if d, _ := p.Stalled(); d != 0 {
		t.Fatalf("stalled %s before any publish", d)
	}
	js.fail.Store(true)
	p.Publish(event(0))
	waitFor(t, 5*time.Second, "a failed publish", func() bool { d, _ := p.Stalled(); return d > 0 })
	time.Sleep(50 * time.Millisecond)
	if d, msg := p.Stalled(); d < 50*time.Millisecond || msg != errFlaky.Error() {
		t.Fatalf("stalled %s, %q; want at least 50ms, %q", d, msg, errFlaky)
	}
	js.fail.Store(false)
	waitFor(t, 5*time.Second, "the event published", func() bool { return p.Depth() == 0 })
	if d, _ := p.Stalled(); d != 0 {
		t.Fatalf("stalled %s after an ack", d)
	}
}

// TestNeverConnectedSaysSo: a publisher whose NATS has not been reachable
// since the start says that NATS is not connected, not nats.go's "headers
// not supported by this server", which would send an operator to upgrade
// a server that is only down.
func TestNeverConnectedSaysSo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	nc, err := nats.Connect("nats://"+dead, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(t, js, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)
	p.Publish(event(0))
	waitFor(t, 5*time.Second, "a failed publish", func() bool { d, _ := p.Stalled(); return d > 0 })
	if _, msg := p.Stalled(); msg != errNotConnected.Error() {
		t.Fatalf("stalled on %q; want %q", msg, errNotConnected)
	}
}

// TestOutboxWriteFailureIsReported: while the outbox cannot write (a full
// or read-only disk) and events wait in memory for it, OutboxError says
// so, which takes the gateway's /readyz down: those events would die with
// the process. Once a write goes through it is nil again, and nothing was
// lost.
func TestOutboxWriteFailureIsReported(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connect(t, srv.ClientURL())
	fj := &flakyJS{JetStream: js}
	fj.fail.Store(true) // the events stay in the outbox
	p := newPublisher(t, fj, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)
	p.Publish(event(0))
	waitFor(t, 10*time.Second, "the first event written", func() bool { return p.ob.depth() == 1 })
	if err := p.OutboxError(); err != nil {
		t.Fatalf("OutboxError = %v while the outbox writes", err)
	}
	// The segment's file, read-only: every write fails.
	p.ob.mu.Lock()
	seg := p.ob.segs[len(p.ob.segs)-1]
	good := seg.f
	ro, err := os.Open(good.Name())
	if err != nil {
		p.ob.mu.Unlock()
		t.Fatal(err)
	}
	seg.f = ro
	p.ob.mu.Unlock()
	p.Publish(event(1))
	waitFor(t, 10*time.Second, "the failed write reported", func() bool { return p.OutboxError() != nil })
	p.ob.mu.Lock()
	seg.f = good
	p.ob.mu.Unlock()
	ro.Close()
	p.Publish(event(2))
	waitFor(t, 10*time.Second, "the outbox writing again", func() bool { return p.OutboxError() == nil })
	fj.fail.Store(false)
	waitFor(t, 20*time.Second, "every event published", func() bool { return p.Depth() == 0 })
	checkIDs(t, streamIDs(t, js), 0, 3)
}

// TestAnotherStreamCapturingTheSubjects: a stream other than LLMPROXY that
// captures the events' subjects (an operator's "llmproxy.>") does not take
// the events: the publish names the stream it expects, the server refuses
// it, and the events wait in the outbox, the refusal reported, until
// LLMPROXY takes them.
func TestAnotherStreamCapturingTheSubjects(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connectBare(t, srv.ClientURL())
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUDIT", Subjects: []string{"llmproxy.>"}}); err != nil {
		t.Fatal(err)
	}
	p := newPublisher(t, js, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)
	p.Publish(event(0))
	waitFor(t, 5*time.Second, "the refusal reported", func() bool { d, _ := p.Stalled(); return d > 0 })
	if _, msg := p.Stalled(); !strings.Contains(msg, "expected stream") || !strings.Contains(msg, "another stream than LLMPROXY captures") {
		t.Errorf("stalled with %q, want the server's refusal of the stream", msg)
	}
	if p.Depth() != 1 {
		t.Fatalf("outbox depth %d, want the event kept", p.Depth())
	}
	if s, _ := js.Stream(ctx, "AUDIT"); s.CachedInfo().State.Msgs != 0 {
		t.Fatalf("AUDIT took %d events", s.CachedInfo().State.Msgs)
	}
	if err := js.DeleteStream(ctx, "AUDIT"); err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the event published", func() bool { return p.Depth() == 0 })
	checkIDs(t, streamIDs(t, js), 0, 1)
}

// TestNoStreamSaysSo: with no stream taking the events (LLMPROXY deleted),
// the publisher's stall says that the stream does not exist, not only
// nats.go's "no response from stream".
func TestNoStreamSaysSo(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	defer srv.Shutdown()
	js := connectBare(t, srv.ClientURL())
	p := newPublisher(t, js, t.TempDir(), testOptions(prometheus.NewRegistry()))
	defer closePublisher(t, p)
	p.Publish(event(0))
	waitFor(t, 5*time.Second, "the failure reported", func() bool { d, _ := p.Stalled(); return d > 0 })
	if _, msg := p.Stalled(); !strings.Contains(msg, "the stream LLMPROXY does not exist") {
		t.Errorf("stalled with %q, want the missing stream named", msg)
	}
}
