package events

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// testJetStream runs a JetStream server for the test and connects to it.
func testJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

func TestEnsureStreamsCreatesUpdatesAndLeavesAlone(t *testing.T) {
	js := testJetStream(t)
	ctx := context.Background()

	if err := EnsureStreams(ctx, js, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	created := s.CachedInfo().Created
	if s.CachedInfo().Config.MaxAge != 7*24*time.Hour || s.CachedInfo().Config.Duplicates != 2*time.Minute {
		t.Fatalf("defaults not applied: %+v", s.CachedInfo().Config)
	}
	// Same settings again: nothing changes.
	if err := EnsureStreams(ctx, js, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// A longer retention: updated in place, messages kept.
	if err := EnsureStreams(ctx, js, StreamOptions{MaxAge: 30 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, StreamName)
	if s.CachedInfo().Config.MaxAge != 30*24*time.Hour || !s.CachedInfo().Created.Equal(created) {
		t.Fatalf("stream not updated in place: %+v", s.CachedInfo())
	}
	// A shorter one is not applied (it would drop events no meter may
	// have applied yet), and the log says so.
	var logged bytes.Buffer
	if err := EnsureStreams(ctx, js, StreamOptions{MaxAge: time.Hour, Log: slog.New(slog.NewTextHandler(&logged, nil))}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, StreamName)
	if s.CachedInfo().Config.MaxAge != 30*24*time.Hour {
		t.Fatalf("retention lowered to %s", s.CachedInfo().Config.MaxAge)
	}
	if !strings.Contains(logged.String(), "keeps its longer retention") || !strings.Contains(logged.String(), "configured=1h0m0s") {
		t.Fatalf("log %q, want the retention kept said", logged.String())
	}
	if _, err := js.Stream(ctx, DLQStreamName); err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	// CreateStreams (the commands that only read) leaves them as they are.
	if err := CreateStreams(ctx, js, StreamOptions{MaxAge: 60 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, StreamName)
	if s.CachedInfo().Config.MaxAge != 30*24*time.Hour {
		t.Fatalf("CreateStreams changed the stream's retention to %s", s.CachedInfo().Config.MaxAge)
	}
}

// TestMakeMissingStreams: a stream deleted is made again, and named; with
// both there, nothing is made.
func TestMakeMissingStreams(t *testing.T) {
	js := testJetStream(t)
	ctx := context.Background()
	if err := EnsureStreams(ctx, js, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if made, err := MakeMissingStreams(ctx, js, StreamOptions{}); err != nil || len(made) != 0 {
		t.Fatalf("made %v, %v; want nothing", made, err)
	}
	if err := js.DeleteStream(ctx, StreamName); err != nil {
		t.Fatal(err)
	}
	if made, err := MakeMissingStreams(ctx, js, StreamOptions{}); err != nil || len(made) != 1 || made[0] != StreamName {
		t.Fatalf("made %v, %v; want %s", made, err, StreamName)
	}
	if _, err := js.Stream(ctx, StreamName); err != nil {
		t.Fatal(err)
	}
}

func TestCreateStreamsCreatesMissing(t *testing.T) {
	js := testJetStream(t)
	ctx := context.Background()
	if err := CreateStreams(ctx, js, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{StreamName, DLQStreamName} {
		if _, err := js.Stream(ctx, name); err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
	}
}

// TestAsyncStreamKeepsItsMode: LLMPROXY is made in the default persist
// mode (a write per stored event, so a failed write fails its publish,
// which the outbox then keeps); a stream an earlier release made in async
// mode, which the server cannot change, is still updated in its mode.
func TestAsyncStreamKeepsItsMode(t *testing.T) {
	ctx := context.Background()
	mode := func(js jetstream.JetStream, name string) jetstream.PersistModeType {
		t.Helper()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.PersistMode
	}

	js := testJetStream(t)
	if err := EnsureStreams(ctx, js, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if m, d := mode(js, StreamName), mode(js, DLQStreamName); m != jetstream.DefaultPersistMode || d != jetstream.DefaultPersistMode {
		t.Fatalf("persist modes %s and %s, want default", m, d)
	}

	js = testJetStream(t)
	async := StreamConfig(StreamOptions{})
	async.PersistMode = jetstream.AsyncPersistMode
	if _, err := js.CreateStream(ctx, async); err != nil {
		t.Fatal(err)
	}
	if err := EnsureStreams(ctx, js, StreamOptions{MaxAge: 30 * 24 * time.Hour}); err != nil {
		t.Fatalf("update of an async stream: %v", err)
	}
	s, _ := js.Stream(ctx, StreamName)
	if c := s.CachedInfo().Config; c.MaxAge != 30*24*time.Hour || c.PersistMode != jetstream.AsyncPersistMode {
		t.Fatalf("after an update: max age %s, persist mode %s; want 720h, async", c.MaxAge, c.PersistMode)
	}
}

// TestHeartbeatMissLevel: one missed heartbeat is DEBUG (a loaded
// machine's scheduling), a run of them WARN, and again while it lasts.
func TestHeartbeatMissLevel(t *testing.T) {
	for n, want := range map[int]slog.Level{1: slog.LevelDebug, 2: slog.LevelDebug, 3: slog.LevelWarn, 4: slog.LevelDebug, 6: slog.LevelWarn} {
		if got := HeartbeatMissLevel(n); got != want {
			t.Errorf("HeartbeatMissLevel(%d) = %v, want %v", n, got, want)
		}
	}
}

// TestStreamCapturingTheSubjectsNamed: LLMPROXY cannot be made while another
// stream captures its subjects; the error names that stream.
func TestStreamCapturingTheSubjectsNamed(t *testing.T) {
	js := testJetStream(t)
	ctx := context.Background()
	for i, subject := range []string{"llmproxy.>", "llmproxy.v1.request.completed.k1"} {
		name := fmt.Sprintf("AUDIT%d", i)
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}}); err != nil {
			t.Fatal(err)
		}
		err := EnsureStreams(ctx, js, StreamOptions{})
		if err == nil || !strings.Contains(err.Error(), "stream "+name+" already captures llmproxy.v1.>") {
			t.Fatalf("%s: error %v, want the stream named", subject, err)
		}
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
}
