package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// freeAddr returns a loopback address with a free port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// eventually calls cond until it holds or d has passed.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, d, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runCmd runs a CLI command in process and returns its exit code, stdout
// and stderr.
func runCmd(run func([]string, io.Writer, io.Writer) int, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// dataDirOnlyConfig writes a single-binary config with nothing but
// data_dir for NATS and the ledger: a backend, one key and a webhook
// that answers 400 (so every event is dead-lettered at once).
func dataDirOnlyConfig(t *testing.T, extra string) (path, listen string) {
	t.Helper()
	backend := chatBackend(t)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "bad request", http.StatusBadRequest)
	}))
	t.Cleanup(hook.Close)
	dir := t.TempDir()
	listen = freeAddr(t)
	path = filepath.Join(dir, "llmproxy.yaml")
	cfg := fmt.Sprintf(`listen: %q
data_dir: %q
backends:
  - url: %q
webhooks:
  - { name: strict, url: %q, secret: s3cret }
auth: { enabled: true, storage: file }
api_keys:
  - { key: sk-llmproxy-cli-test, id: cli }
logging: { level: warn }
%s
`, listen, filepath.Join(dir, "data"), backend.URL, hook.URL, extra)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, listen
}

// waitGatewayUp waits for the gateway at listen to answer /healthz.
func waitGatewayUp(t *testing.T, listen string) {
	t.Helper()
	eventually(t, 30*time.Second, "the gateway up", func() (bool, string) {
		resp, err := http.Get("http://" + listen + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// postHello sends dataDirOnlyConfig's key a chat completion and returns
// the reply, its body read.
func postHello(t *testing.T, listen string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/v1/chat/completions",
		strings.NewReader(`{"model":"mock-model","messages":[{"role":"user","content":"hello"}]}`))
	req.Header.Set("Authorization", "Bearer sk-llmproxy-cli-test")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// findRequest runs `logs --request-id id` and reports whether it printed
// that request.
func findRequest(path, id string) (bool, string) {
	code, out, errOut := runCmd(runLogs, "--config", path, "--request-id", id, "--json")
	var list []struct {
		RequestID string `json:"request_id"`
		KeyID     string `json:"key_id"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		return false, fmt.Sprintf("exit %d: %s%s", code, out, errOut)
	}
	return len(list) == 1 && list[0].RequestID == id && list[0].KeyID == "cli", out
}

// findDeadLetter runs `webhooks dlq list` and reports whether it listed
// the one dead letter, of request id.
func findDeadLetter(path, id string) (bool, string) {
	code, out, errOut := runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
	var list []struct {
		Endpoint string `json:"endpoint"`
		Reason   string `json:"reason"`
		Event    struct {
			RequestID string `json:"request_id"`
		} `json:"event"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		return false, fmt.Sprintf("exit %d: %s%s", code, out, errOut)
	}
	return len(list) == 1 && list[0].Event.RequestID == id && list[0].Endpoint == "strict" &&
		list[0].Reason == "permanent_failure", out
}

// TestCLIWithDataDirOnly: with a config whose only NATS is data_dir (the
// single binary's embedded server), `llmproxy logs` and `llmproxy webhooks
// dlq list` find a request and its dead letter through the running serve,
// and, once serve has stopped (cleanly, or leaving a stale client file as a
// crash does), by opening the store themselves. The server listens on
// 127.0.0.1 and asks a token, or, with nats.embedded_listen, listens there
// and asks none, as that key always has.
func TestCLIWithDataDirOnly(t *testing.T) {
	t.Run("loopback", func(t *testing.T) { testCLIWithDataDirOnly(t, "") })
	t.Run("embedded_listen", func(t *testing.T) { testCLIWithDataDirOnly(t, freeAddr(t)) })
}

func testCLIWithDataDirOnly(t *testing.T, embeddedListen string) {
	extra := ""
	if embeddedListen != "" {
		extra = fmt.Sprintf("nats: { embedded_listen: %q }", embeddedListen)
	}
	path, listen := dataDirOnlyConfig(t, extra)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, path, "all", "", slog.New(slog.NewTextHandler(&logBuf, nil))) }()
	waitGatewayUp(t, listen)

	resp := postHello(t, listen)
	id := resp.Header.Get("X-LLMProxy-Request-Id")
	if resp.StatusCode != http.StatusOK || id == "" {
		t.Fatalf("request: %s, request id %q", resp.Status, id)
	}

	// While serve runs, the commands go through its server.
	eventually(t, 30*time.Second, "logs through the running server", func() (bool, string) { return findRequest(path, id) })
	eventually(t, 30*time.Second, "the dead letter through the running server", func() (bool, string) { return findDeadLetter(path, id) })

	// The client file: the owner's only, the server's address, and the
	// token it asks of every client (on nats.embedded_listen, the full
	// user's password: a client without one may only read).
	clientFile := cfg.DataPath(clientFileName)
	st, err := os.Stat(clientFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", clientFile, st.Mode().Perm())
	}
	c, err := readClientFile(cfg)
	if err != nil || c.PID != os.Getpid() {
		t.Fatalf("client file = %+v, %v; want this pid", c, err)
	}
	if embeddedListen != "" {
		if c.URL != "nats://"+embeddedListen || c.User == "" || len(c.Token) < 32 {
			t.Fatalf("client file = %+v; want nats://%s and the full user's credentials", c, embeddedListen)
		}
		nc, err := nats.Connect(c.URL, nats.RetryOnFailedConnect(false))
		if err != nil {
			t.Fatalf("nats.embedded_listen refused a client without credentials (it may read): %v", err)
		}
		nc.Close()
	} else {
		if !strings.HasPrefix(c.URL, "nats://127.0.0.1:") || len(c.Token) < 32 {
			t.Fatalf("client file = %+v; want a loopback URL and a token", c)
		}
		if nc, err := nats.Connect(c.URL, nats.RetryOnFailedConnect(false)); err == nil {
			nc.Close()
			t.Fatal("the embedded server let in a client without the token")
		}
		nc, err := nats.Connect(c.URL, nats.RetryOnFailedConnect(false), nats.Token(c.Token))
		if err != nil {
			t.Fatalf("the token from the client file: %v", err)
		}
		nc.Close()
	}

	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(clientFile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("client file after a clean shutdown: %v, want none", err)
	}

	// No server runs: the commands open the store themselves.
	if ok, state := findRequest(path, id); !ok {
		t.Fatalf("logs with serve stopped: %s", state)
	}
	if ok, state := findDeadLetter(path, id); !ok {
		t.Fatalf("dlq list with serve stopped: %s", state)
	}

	// A client file left by a crashed server names an address nothing
	// answers at: the free lock shows it stale.
	if err := writeClientFile(clientFile, embeddedClient{URL: "nats://" + freeAddr(t), Token: "stale", PID: 1}); err != nil {
		t.Fatal(err)
	}
	if ok, state := findRequest(path, id); !ok {
		t.Fatalf("logs beside a stale client file: %s", state)
	}
	if ok, state := findDeadLetter(path, id); !ok {
		t.Fatalf("dlq list beside a stale client file: %s", state)
	}
	if _, err := os.Stat(clientFile); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale client file left in place: %v", err)
	}
	// Each command let go of the store when it ended.
	lock, err := lockStore(context.Background(), cfg, 0)
	if err != nil {
		t.Fatalf("the store's lock after the commands: %v", err)
	}
	lock.release()
	if out := logBuf.String(); strings.Contains(out, "level=ERROR") {
		t.Errorf("serve logged errors:\n%s", out)
	}
}

// TestStoreLock: a second process (here a second open file) cannot take a
// data_dir's store while the first holds it; it waits as long as it is
// told, then names the holder.
func TestStoreLock(t *testing.T) {
	cfg := &config.Config{DataDir: t.TempDir()}
	ctx := context.Background()
	first, err := lockStore(ctx, cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = lockStore(ctx, cfg, 200*time.Millisecond)
	if !errors.Is(err, errStoreBusy) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock = %v; want errStoreBusy naming pid %d", err, os.Getpid())
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("gave up after %s, want 200ms", waited)
	}
	first.release()
	second, err := lockStore(ctx, cfg, 0)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	second.release()

	// A data_dir the lock cannot be made in is named as the key.
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := lockStore(ctx, &config.Config{DataDir: file}, 0); err == nil || !strings.HasPrefix(err.Error(), "data_dir: ") || !strings.Contains(err.Error(), file) {
		t.Fatalf("lock in a data_dir that is a file = %v; want an error naming data_dir and the path", err)
	}
}

// TestCLIWithoutStore: without nats.url, a data_dir where serve never ran
// is an error that says so, and the command creates nothing there.
func TestCLIWithoutStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "llmproxy.yaml")
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("data_dir: %q\nbackends: [{url: http://127.0.0.1:9}]\n", data)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, run := range []struct {
		name string
		fn   func([]string, io.Writer, io.Writer) int
		args []string
	}{
		{"logs", runLogs, []string{"--config", path}},
		{"webhooks dlq list", runWebhooks, []string{"dlq", "list", "--config", path}},
	} {
		code, _, errOut := runCmd(run.fn, run.args...)
		if code != 1 || !strings.Contains(errOut, "no event store at "+filepath.Join(data, "nats")) {
			t.Errorf("%s = %d, %q; want 1 and no event store", run.name, code, errOut)
		}
	}
	if _, err := os.Stat(data); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("data_dir created: %v", err)
	}
}

// TestEmbeddedSyncsBeforeTheOutboxLetsGo: the embedded server fsyncs its
// store well within the time the gateway's outbox keeps an event after
// its publish was acknowledged, so a power loss cannot take an event from
// both: the server has it on disk, or the outbox publishes it again.
// nats-server's own default (2 minutes) left a window of acknowledged
// events that neither held.
func TestEmbeddedSyncsBeforeTheOutboxLetsGo(t *testing.T) {
	cfg := &config.Config{DataDir: t.TempDir()}
	lock, err := lockStore(context.Background(), cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := startEmbedded(cfg, lock, false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.shutdown()
	js := e.ns.JetStreamConfig()
	if js == nil {
		t.Fatal("the embedded server runs without JetStream")
	}
	// Half the outbox's delay leaves the other half for the write-behind
	// and the fsync itself.
	if got, limit := js.SyncInterval, gateway.OutboxDurableDelay/2; got <= 0 || got > limit {
		t.Fatalf("embedded JetStream sync interval %v; want at most %v (the outbox drops an acknowledged event after %v)",
			got, limit, gateway.OutboxDurableDelay)
	}
}

// TestEmbeddedListenIsReadOnlyWithoutCredentials: on nats.embedded_listen a
// client without credentials reads the events (a subscription, a stream
// message) but cannot publish one (usage a ledger would bill), make a
// consumer (whose acks could take a meter's events) or purge the stream;
// this process and the CLI, with the client file's credentials, can.
func TestEmbeddedListenIsReadOnlyWithoutCredentials(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := &config.Config{DataDir: t.TempDir()}
	cfg.NATS.EmbeddedListen = addr
	lock, err := lockStore(context.Background(), cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := startEmbedded(cfg, lock, true)
	if err != nil {
		t.Fatal(err)
	}
	defer e.shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The full user: this process (and the CLI, from the client file).
	b, err := connectBus(ctx, cfg, "", e, nil, true, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if err := b.waitStreams(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := readClientFile(cfg)
	if err != nil || c.User == "" || c.Token == "" {
		t.Fatalf("client file %+v, %v; want the full user's credentials", c, err)
	}
	cli, err := connectBus(ctx, cfg, c.URL, nil, []nats.Option{c.auth()}, false, log)
	if err != nil {
		t.Fatalf("the CLI's connection: %v", err)
	}
	defer cli.close()

	anon, err := nats.Connect("nats://"+addr, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("a client without credentials is refused: %v", err)
	}
	defer anon.Close()
	sub, err := anon.SubscribeSync(events.SubjectCompletedAll)
	if err != nil {
		t.Fatal(err)
	}
	if err := anon.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.Publish(ctx, events.Subject("alpha"), []byte(`{"request_id":"r1"}`)); err != nil {
		t.Fatalf("the full user's publish: %v", err)
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the subscription without credentials got no event: %v", err)
	}
	ajs, err := jetstream.New(anon)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := ajs.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatalf("stream info without credentials: %v", err)
	}
	if _, err := stream.GetMsg(ctx, 1); err != nil {
		t.Fatalf("reading a message without credentials: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if _, err := ajs.Publish(short, events.Subject("alpha"), []byte(`{"request_id":"fake"}`)); err == nil {
		t.Error("an event published without credentials was stored")
	}
	if err := stream.Purge(short); err == nil {
		t.Error("the stream was purged without credentials")
	}
	if _, err := ajs.CreateOrUpdateConsumer(short, events.StreamName, jetstream.ConsumerConfig{Durable: "meter"}); err == nil {
		t.Error("a consumer was made without credentials")
	}
	if info, err := stream.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream after the attempts: %+v, %v; want the one event", info, err)
	}
}

// TestLostLedgerIsRebuilt: a single binary whose ledger file is gone when
// it starts, while the meter had applied events to it, rebuilds it from
// the event stream instead of starting every key's usage at zero.
func TestLostLedgerIsRebuilt(t *testing.T) {
	admin := freeAddr(t)
	path, listen := dataDirOnlyConfig(t, fmt.Sprintf("admin: { listen: %q, token: rebuild-token }", admin))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- serve(ctx, cfg, path, "all", "", slog.New(slog.NewTextHandler(&logBuf, nil))) }()
		waitGatewayUp(t, listen)
		return func() {
			cancel()
			if err := <-served; err != nil {
				t.Fatal(err)
			}
		}
	}
	requests := func() (bool, string) {
		rows, err := readUsage(context.Background(), cfg, "cli", ledger.Never)
		if err != nil || len(rows) != 1 {
			return false, fmt.Sprint(rows, err)
		}
		return rows[0].Requests == 3, fmt.Sprint(rows)
	}
	stop := start()
	for range 3 {
		postHello(t, listen)
	}
	eventually(t, 30*time.Second, "three requests in the ledger", requests)
	stop()
	if err := os.Remove(cfg.DataPath("ledger.db")); err != nil {
		t.Fatal(err)
	}
	stop = start()
	defer stop()
	eventually(t, 30*time.Second, "the ledger rebuilt from the stream", requests)
	if !strings.Contains(logBuf.String(), "rebuilding it from the event stream") {
		t.Errorf("no WARN line says the ledger is rebuilt; log:\n%s", logBuf.String())
	}
}
