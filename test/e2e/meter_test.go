package e2e

// The meter's exactly-once ledger under crashes (issue 5's "Done when"):
// meters killed while they work, NATS stopped while the gateway serves,
// Redis restarted mid-run, and the single binary killed with SIGKILL.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// natsdEnv, when set to "<port>|<store dir>", makes the test binary run a
// JetStream server instead of the tests (see TestMain): a NATS deployment
// the tests can stop and start again on the same port and store.
const natsdEnv = "E2E_NATSD"

// natsdMain runs the server until SIGTERM or SIGINT.
func natsdMain(spec string) int {
	port, dir, _ := strings.Cut(spec, "|")
	p, err := strconv.Atoi(port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natsd: bad port", port)
		return 2
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: p, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "natsd:", err)
		return 1
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		fmt.Fprintln(os.Stderr, "natsd: not ready")
		return 1
	}
	<-sig
	ns.Shutdown()
	ns.WaitForShutdown()
	return 0
}

// natsd is a child JetStream server on a fixed port and store.
type natsd struct {
	t    testing.TB
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startNatsd(t testing.TB) *natsd {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	p, _ := strconv.Atoi(port)
	n := &natsd{t: t, port: p, dir: t.TempDir()}
	n.start()
	t.Cleanup(func() { n.stop(syscall.SIGKILL) })
	return n
}

func (n *natsd) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

func (n *natsd) start() {
	n.t.Helper()
	n.cmd = exec.Command(os.Args[0], "-test.run=^$")
	n.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d|%s", natsdEnv, n.port, n.dir))
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.done = make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	eventually(n.t, 30*time.Second, "natsd up", func() (bool, string) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", n.port), time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

func (n *natsd) stop(sig syscall.Signal) {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	select {
	case <-n.done:
		return
	default:
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

// redisd is a redis-server of the test's own, with an append-only file
// fsynced on every write, so that its data survives a restart.
type redisd struct {
	t    testing.TB
	port string
	dir  string
	p    *exec.Cmd
	done chan struct{}
}

func startRedisd(t testing.TB) *redisd {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is required in CI")
		}
		t.Skip("redis-server not installed")
	}
	_ = path
	_, port, _ := net.SplitHostPort(freeAddr(t))
	r := &redisd{t: t, port: port, dir: t.TempDir()}
	r.start()
	t.Cleanup(func() { r.kill() })
	return r
}

func (r *redisd) url() string { return "redis://127.0.0.1:" + r.port + "/0" }

func (r *redisd) start() {
	r.t.Helper()
	r.p = exec.Command("redis-server", "--port", r.port, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", r.dir)
	if err := r.p.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.done = make(chan struct{})
	go func() { _ = r.p.Wait(); close(r.done) }()
	eventually(r.t, 30*time.Second, "redis up", func() (bool, string) {
		out, err := exec.Command("redis-cli", "-p", r.port, "ping").CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "PONG", string(out)
	})
}

func (r *redisd) kill() {
	if r.p == nil || r.p.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.p.Process.Kill()
	<-r.done
}

// meterConfig is a config for gateway and meter processes against an
// external NATS and Redis, with one key (alpha).
func meterConfig(listen, dataDir, natsURL, redisURL, prefix, backend string) string {
	return fmt.Sprintf(`
listen: %q
data_dir: %q
nats: { url: %q }
redis: { url: %q, prefix: %q }
backends:
  - url: %q
api_keys:
  - key: %q
    id: alpha
    user_id: user_a
logging: { level: warn }
`, listen, dataDir, natsURL, redisURL, prefix, backend, keyAlpha)
}

// usageNever returns `llmproxy usage --json --period never`, by key.
func usageNever(t testing.TB, cfg string) (map[string]usageRow, error) {
	out, err := runCLI(t, "usage", "--config", cfg, "--json", "--period", "never")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Usage []usageRow `json:"usage"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("parse %q: %w", out, err)
	}
	m := map[string]usageRow{}
	for _, r := range doc.Usage {
		m[r.KeyID] = r
	}
	return m, nil
}

// waitUsageExact waits until the never-reset usage of every key is exactly
// want (and no other key has usage), then checks it stays so.
func waitUsageExact(t testing.TB, cfg string, within time.Duration, want map[string]usageRow) {
	t.Helper()
	match := func() (bool, string) {
		rows, err := usageNever(t, cfg)
		if err != nil {
			return false, err.Error()
		}
		var diffs []string
		for k, w := range want {
			r := rows[k]
			if r.PromptTokens != w.PromptTokens || r.CompletionTokens != w.CompletionTokens ||
				r.TotalTokens != w.PromptTokens+w.CompletionTokens || r.Requests != w.Requests {
				diffs = append(diffs, fmt.Sprintf("%s: got p=%d c=%d t=%d n=%d, want p=%d c=%d n=%d", k,
					r.PromptTokens, r.CompletionTokens, r.TotalTokens, r.Requests, w.PromptTokens, w.CompletionTokens, w.Requests))
			}
		}
		for k, r := range rows {
			if _, ok := want[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("unexpected key %s: %+v", k, r))
			}
		}
		if len(diffs) > 0 {
			if len(diffs) > 5 {
				diffs = append(diffs[:5], fmt.Sprintf("… %d keys differ", len(diffs)))
			}
			return false, strings.Join(diffs, "; ")
		}
		return true, ""
	}
	eventually(t, within, "ledger exact", match)
	time.Sleep(time.Second)
	if ok, state := match(); !ok {
		t.Fatalf("ledger changed after settling: %s", state)
	}
}

// TestMeterThreeMetersKilledEvery2s: three meters share 20,000 events
// while one is SIGKILLed every 2 s; the ledger is exact. Most of its time
// is the 30 s ack wait of the killed meters' events, and its bounds are
// counts, so it runs beside the other parallel tests.
func TestMeterThreeMetersKilledEvery2s(t *testing.T) {
	t.Parallel()
	rurl, prefix := redisPrefix(t, "e2emeter")
	_, natsURL := natsServer(t)

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, meterConfig(freeAddr(t), filepath.Join(dir, "data"), natsURL, rurl, prefix, "http://127.0.0.1:1"))
	var meters []*proc
	for i := 0; i < 3; i++ {
		meters = append(meters, start(t, "llmproxy", "serve", "--config", cfg, "--target", "meter"))
	}

	// 20,000 events over 50 keys, with known token counts; every 40th is
	// published a second time under another message id, as a redelivery
	// past the stream's duplicate window would be, and every 97th again
	// under its own id (the stream drops that one).
	const nEvents, nKeys = 20000, 50
	want := map[string]usageRow{}
	type pub struct {
		subject, msgID string
		data           []byte
	}
	var pubs, again []pub
	base := time.Now().UTC()
	for i := 0; i < nEvents; i++ {
		key := fmt.Sprintf("mk%02d", i%nKeys)
		ev := &events.RequestCompleted{
			RequestID: fmt.Sprintf("meter-%s-%05d", prefix, i), KeyID: key, UserID: "u" + key[2:],
			Model: fmt.Sprintf("model-%d", i%3), Endpoint: "/v1/chat/completions", StatusCode: 200,
			Usage:     events.Usage{PromptTokens: int64(i%17 + 1), CompletionTokens: int64(i%29 + 3)},
			Timestamp: base.Add(time.Duration(i) * time.Millisecond),
		}
		ev.Usage.TotalTokens = ev.Usage.PromptTokens + ev.Usage.CompletionTokens
		data, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		w := want[key]
		w.KeyID = key
		w.PromptTokens += ev.Usage.PromptTokens
		w.CompletionTokens += ev.Usage.CompletionTokens
		w.Requests++
		want[key] = w
		p := pub{events.Subject(key), ev.RequestID, data}
		pubs = append(pubs, p)
		if i%40 == 0 {
			again = append(again, pub{p.subject, p.msgID + "#redelivered", data})
		}
		if i%97 == 0 {
			again = append(again, p)
		}
	}
	// Interleave the second copies with the later originals.
	all := make([]pub, 0, len(pubs)+len(again))
	for i, p := range pubs {
		all = append(all, p)
		if j := i - nEvents/2; j >= 0 && j < len(again) {
			all = append(all, again[j])
		}
	}

	// Publish in chunks over ~8 s while one meter is SIGKILLed every 2 s
	// and started again; keep killing until the consumer has caught up.
	stopKills := make(chan struct{})
	killsDone := make(chan int)
	go func() {
		kills := 0
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopKills:
				killsDone <- kills
				return
			case <-tick.C:
			}
			m := meters[kills%len(meters)]
			m.stop(syscall.SIGKILL)
			m.start()
			kills++
		}
	}()

	// The killer stops before the meters' processes are cleaned up, also
	// when the test fails half way.
	var stopOnce sync.Once
	stopKilling := func() int {
		kills := -1
		stopOnce.Do(func() { close(stopKills); kills = <-killsDone })
		return kills
	}
	t.Cleanup(func() { stopKilling() })

	const chunks = 10
	per := (len(all) + chunks - 1) / chunks
	started := time.Now()
	for c := 0; c < chunks; c++ {
		var futs []jetstream.PubAckFuture
		for _, p := range all[c*per : min((c+1)*per, len(all))] {
			msg := &nats.Msg{Subject: p.subject, Data: p.data, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, p.msgID)
			f, err := js.PublishMsgAsync(msg)
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			futs = append(futs, f)
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(60 * time.Second):
			t.Fatal("publish acks not received")
		}
		for _, f := range futs {
			select {
			case err := <-f.Err():
				t.Fatalf("publish: %v", err)
			default:
			}
		}
		time.Sleep(time.Until(started.Add(time.Duration(c+1) * 800 * time.Millisecond)))
	}
	info, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	wantMsgs := uint64(nEvents + (nEvents+39)/40)
	if got := info.CachedInfo().State.Msgs; got != wantMsgs {
		t.Fatalf("stream holds %d messages, want %d (the same-id copies dropped, the others kept)", got, wantMsgs)
	}

	// Kill for a few seconds more while the meters work through the
	// backlog, then stop: a meter killed every 2 s on a loaded machine may
	// not live long enough to ack what it took, and the catch-up below
	// must not depend on that.
	time.Sleep(4 * time.Second)
	kills := stopKilling()
	if kills < 4 {
		t.Fatalf("only %d meter kills happened while the meters worked", kills)
	}
	eventually(t, 120*time.Second, "meters caught up", func() (bool, string) {
		c, err := js.Consumer(ctx, events.StreamName, "meter")
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == 0 && time.Since(started) > 9*time.Second,
			fmt.Sprintf("pending %d, ack pending %d", ci.NumPending, ci.NumAckPending)
	})
	waitUsageExact(t, cfg, 60*time.Second, want)
	t.Logf("%d events (+%d second copies) over %d keys, %d SIGKILLs, caught up in %s",
		nEvents, len(again), nKeys, kills, time.Since(started).Round(100*time.Millisecond))
}

// loadResult is one request of a load run.
type loadResult struct {
	id     string
	status int // 0: no response
	usage  tokens
}

// steadyLoad sends non-stream requests at rate per second, each in its own
// goroutine, until stop is closed; it returns once every request is done.
func steadyLoad(gateway, key, idPrefix string, rate int, stop <-chan struct{}) []loadResult {
	var mu sync.Mutex
	var out []loadResult
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			wg.Wait()
			return out
		case <-tick.C:
		}
		id := fmt.Sprintf("%s-%d", idPrefix, i)
		body := chatBody(i, false, false)
		wg.Go(func() {
			r := loadResult{id: id}
			req, _ := http.NewRequest(http.MethodPost, gateway+"/v1/chat/completions", strings.NewReader(string(body)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("X-Request-Id", id)
			if resp, err := client.Do(req); err == nil {
				var doc struct {
					Usage struct {
						Prompt     int64 `json:"prompt_tokens"`
						Completion int64 `json:"completion_tokens"`
					} `json:"usage"`
				}
				derr := json.NewDecoder(resp.Body).Decode(&doc)
				resp.Body.Close()
				if derr == nil || resp.StatusCode != 200 {
					r.status = resp.StatusCode
					r.usage = tokens{doc.Usage.Prompt, doc.Usage.Completion}
				}
			}
			mu.Lock()
			out = append(out, r)
			mu.Unlock()
		})
	}
}

// summarize returns the ledger row load must produce for its key: every
// request that got a response has an event (success or not).
func summarize(t testing.TB, key string, res []loadResult) usageRow {
	t.Helper()
	row := usageRow{KeyID: key}
	bad := map[int]int{}
	for _, r := range res {
		if r.status != 200 {
			bad[r.status]++
			continue
		}
		row.PromptTokens += r.usage.prompt
		row.CompletionTokens += r.usage.completion
		row.Requests++
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d requests did not get a 200 (status: count, 0 = no response): %v", len(res)-int(row.Requests), len(res), bad)
	}
	return row
}

// streamCounts reads the whole LLMPROXY stream and counts its messages by
// client request id.
func streamCounts(t testing.TB, natsURL string) map[string]int {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	counts := map[string]int{}
	if s.CachedInfo().State.Msgs == 0 {
		return counts
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectCompletedAll}})
	if err != nil {
		t.Fatal(err)
	}
	it, err := c.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			t.Fatalf("read stream: %v", err)
		}
		var ev events.RequestCompleted
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatalf("bad event: %v", err)
		}
		counts[ev.ClientRequestID]++
		md, _ := msg.Metadata()
		if md.Sequence.Stream >= last {
			return counts
		}
	}
}

// TestMeterNATSStopped20s: NATS stopped for 20 s under 100 requests/s;
// every event is in the stream and the ledger exactly once. Its bounds are
// counts, not times, so it runs beside the other parallel tests.
func TestMeterNATSStopped20s(t *testing.T) {
	t.Parallel()
	rurl, prefix := redisPrefix(t, "e2emnats")
	nd := startNatsd(t)

	mockAddr := freeAddr(t)
	start(t, "mockllm", "--listen", mockAddr, "--tokens", "5")
	waitHTTP(t, "http://"+mockAddr+"/health")
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, meterConfig(listen, filepath.Join(dir, "data"), nd.url(), rurl, prefix, "http://"+mockAddr))
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "gateway")
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "meter")
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")

	stop := make(chan struct{})
	done := make(chan []loadResult)
	go func() { done <- steadyLoad(gw, keyAlpha, "natsdown", 100, stop) }()
	time.Sleep(4 * time.Second)
	nd.stop(syscall.SIGTERM)
	down := time.Now()
	time.Sleep(20 * time.Second)
	nd.start()
	t.Logf("NATS down for %s", time.Since(down).Round(100*time.Millisecond))
	time.Sleep(4 * time.Second)
	close(stop)
	res := <-done
	want := summarize(t, "alpha", res)

	eventually(t, 90*time.Second, "every event in the stream", func() (bool, string) {
		counts := streamCounts(t, nd.url())
		missing, twice := 0, 0
		for _, r := range res {
			switch n := counts[r.id]; {
			case n == 0:
				missing++
			case n > 1:
				twice++
			}
		}
		return missing == 0 && twice == 0 && len(counts) == len(res),
			fmt.Sprintf("%d requests, %d ids in the stream, %d missing, %d more than once", len(res), len(counts), missing, twice)
	})
	waitUsageExact(t, cfg, 60*time.Second, map[string]usageRow{"alpha": want})
	t.Logf("%d requests at 100/s, NATS stopped 20 s: each event once in the stream and the ledger", len(res))
}

func TestMeterRedisRestartedMidRun(t *testing.T) {
	rd := startRedisd(t)
	_, natsURL := natsServer(t)
	mockAddr := freeAddr(t)
	start(t, "mockllm", "--listen", mockAddr, "--tokens", "6")
	waitHTTP(t, "http://"+mockAddr+"/health")
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, meterConfig(listen, filepath.Join(dir, "data"), natsURL, rd.url(), "e2eredis", "http://"+mockAddr))
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "gateway")
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "meter")
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")

	stop := make(chan struct{})
	done := make(chan []loadResult)
	go func() { done <- steadyLoad(gw, keyAlpha, "redisdown", 50, stop) }()
	time.Sleep(4 * time.Second)
	rd.kill() // SIGKILL: the append-only file, fsynced per write, is all that survives
	time.Sleep(2 * time.Second)
	rd.start()
	time.Sleep(4 * time.Second)
	close(stop)
	res := <-done
	want := summarize(t, "alpha", res)
	waitUsageExact(t, cfg, 60*time.Second, map[string]usageRow{"alpha": want})
	t.Logf("%d requests at 50/s, Redis SIGKILLed and restarted after 4 s", len(res))
}

// allLocalConfig is the single binary with its local ledger and embedded
// NATS, and an admin listener the usage command asks while it runs.
func allLocalConfig(listen, admin, dataDir, backend string) string {
	return fmt.Sprintf(`
listen: %q
data_dir: %q
admin: { listen: %q, token: "e2e-admin-token" }
backends:
  - url: %q
api_keys:
  - key: %q
    id: alpha
    user_id: user_a
logging: { level: warn }
`, listen, dataDir, admin, backend, keyAlpha)
}

// serveAll starts the single binary on allLocalConfig in front of mock
// and returns it, its config file and its base URL.
func serveAll(t *testing.T, mock string) (srv *proc, cfg, gw string) {
	t.Helper()
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg = filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, allLocalConfig(listen, admin, filepath.Join(dir, "data"), mock))
	srv = start(t, "llmproxy", "serve", "--config", cfg)
	gw = "http://" + listen
	waitHTTP(t, gw+"/healthz")
	return srv, cfg, gw
}

func TestMeterServeAllKill9(t *testing.T) {
	mock := startMock(t, "--tokens", "4")
	srv, cfg, gw := serveAll(t, mock)

	// Every request is the same, so every counted request has the same usage.
	body := chatBody(3, false, false)
	_, direct := post(t, mock+"/v1/chat/completions", "", "", body, nil)
	per := usageFromJSON(t, direct)
	client := &http.Client{Timeout: 30 * time.Second}
	send := func(id string) bool {
		req, _ := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+keyAlpha)
		req.Header.Set("X-Request-Id", id)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var doc struct {
			Usage struct {
				Prompt     int64 `json:"prompt_tokens"`
				Completion int64 `json:"completion_tokens"`
			} `json:"usage"`
		}
		if json.NewDecoder(resp.Body).Decode(&doc) != nil || resp.StatusCode != 200 {
			return false
		}
		if got := (tokens{doc.Usage.Prompt, doc.Usage.Completion}); got != per {
			t.Errorf("request %s: usage %+v, want %+v", id, got, per)
		}
		return true
	}
	ledgerRequests := func() (int64, usageRow, error) {
		rows, err := usageNever(t, cfg)
		if err != nil {
			return 0, usageRow{}, err
		}
		r := rows["alpha"]
		if r.PromptTokens != r.Requests*per.prompt || r.CompletionTokens != r.Requests*per.completion {
			return r.Requests, r, fmt.Errorf("tokens not a whole number of requests: %+v, per request %+v", r, per)
		}
		return r.Requests, r, nil
	}

	// Run 1: four clients; SIGKILL while requests are in flight.
	var completed, attempted atomic.Int64
	var stopping atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Go(func() {
			for i := 0; !stopping.Load(); i++ {
				attempted.Add(1)
				if send(fmt.Sprintf("k9-%d-%d", w, i)) {
					completed.Add(1)
				}
			}
		})
	}
	eventually(t, 60*time.Second, "load under way", func() (bool, string) {
		return completed.Load() >= 150, fmt.Sprintf("%d completed", completed.Load())
	})
	srv.stop(syscall.SIGKILL)
	stopping.Store(true)
	wg.Wait()
	done1, tried1 := completed.Load(), attempted.Load()
	srv.start()
	waitHTTP(t, gw+"/healthz")
	var n1 int64
	eventually(t, 60*time.Second, "ledger within bounds after kill -9", func() (bool, string) {
		n, r, err := ledgerRequests()
		if err != nil {
			return false, err.Error()
		}
		n1 = n
		return n >= done1 && n <= tried1, fmt.Sprintf("ledger %+v; %d completed, %d attempted", r, done1, tried1)
	})
	time.Sleep(time.Second)
	if n, r, err := ledgerRequests(); err != nil || n != n1 {
		t.Fatalf("ledger moved after settling: %+v %v (was %d)", r, err, n1)
	}
	t.Logf("run 1: %d completed, %d attempted (in flight at the kill: %d), ledger %d", done1, tried1, tried1-done1, n1)

	// Run 2: one client; SIGKILL right after a reply, with nothing in flight.
	var done2 int64
	for i := 0; i < 120; i++ {
		if !send(fmt.Sprintf("k9b-%d", i)) {
			t.Fatalf("request k9b-%d failed", i)
		}
		done2++
	}
	srv.stop(syscall.SIGKILL)
	srv.start()
	waitHTTP(t, gw+"/healthz")
	want := n1 + done2
	waitUsageExact(t, cfg, 60*time.Second, map[string]usageRow{"alpha": {
		KeyID: "alpha", PromptTokens: want * per.prompt, CompletionTokens: want * per.completion, Requests: want,
	}})
	t.Logf("run 2: %d completed then SIGKILL between requests, ledger exact at %d", done2, want)

	// Run 3: several short lives, each SIGKILLed right after one reply
	// (streamed or not) and started again: each reply is counted once.
	const lives = 5
	for i := 0; i < lives; i++ {
		resp, b := post(t, gw+"/v1/chat/completions", keyAlpha, fmt.Sprintf("k9c-%d", i), chatBody(3, i%2 == 0, true), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("request k9c-%d: %d %s", i, resp.StatusCode, b)
		}
		srv.stop(syscall.SIGKILL)
		srv.start()
		waitHTTP(t, gw+"/healthz")
	}
	want += lives
	// An event the killed meter had taken comes back after the single
	// binary's 5 s ack wait (not the 30 s of meters on Redis).
	start3 := time.Now()
	waitUsageExact(t, cfg, 25*time.Second, map[string]usageRow{"alpha": {
		KeyID: "alpha", PromptTokens: want * per.prompt, CompletionTokens: want * per.completion, Requests: want,
	}})
	t.Logf("run 3: %d lives, ledger exact at %d %s after the last restart", lives, want, time.Since(start3).Round(10*time.Millisecond))
}

// TestStreamsCutByKill9AreBilled: streams the single binary is relaying
// when it is SIGKILLed are billed once it starts again, each for what it
// had delivered by its last checkpoint, and only once.
func TestStreamsCutByKill9AreBilled(t *testing.T) {
	// 400 tokens 10 ms apart: each stream runs 4 s, and is cut after about
	// 1.5, which leaves it two checkpoints even on a loaded machine.
	srv, cfg, gw := serveAll(t, startMock(t, "--tokens", "400", "--gap", "10ms"))

	const streams = 3
	var read [streams]atomic.Int64 // token events each client has read
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", bytes.NewReader(chatBody(i, true, false)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+keyAlpha)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if strings.Contains(sc.Text(), `"content":"tok`) {
					read[i].Add(1)
				}
			}
		})
	}
	eventually(t, 30*time.Second, "streams under way", func() (bool, string) {
		for i := range read {
			if read[i].Load() < 150 {
				return false, fmt.Sprintf("stream %d read %d events", i, read[i].Load())
			}
		}
		return true, ""
	})
	srv.stop(syscall.SIGKILL)
	wg.Wait() // each client reads what was sent before the kill, then EOF
	var delivered int64
	for i := range read {
		if n := read[i].Load(); n >= 400 {
			t.Fatalf("stream %d ended (%d events) before the kill", i, n)
		}
		delivered += read[i].Load()
	}
	if rows, err := usageNever(t, cfg); err != nil || rows["alpha"].Requests != 0 {
		t.Fatalf("usage before the restart: %+v %v", rows, err)
	}

	srv.start()
	waitHTTP(t, gw+"/healthz")
	var row usageRow
	eventually(t, 30*time.Second, "the cut streams billed", func() (bool, string) {
		rows, err := usageNever(t, cfg)
		if err != nil {
			return false, err.Error()
		}
		row = rows["alpha"]
		return row.Requests == streams, fmt.Sprintf("%+v", row)
	})
	// A checkpoint every 0.5 s: each stream is billed for what it had
	// delivered about 0.5 s (50 events) before the kill (100 allows for a
	// loaded machine), and no more than it delivered; an event's text,
	// "tok<i> ", is 1 to 4 tokens.
	lo, hi := delivered-streams*100, 4*delivered
	if row.CompletionTokens < lo || row.CompletionTokens > hi || row.PromptTokens <= 0 {
		t.Fatalf("billed %+v for %d events delivered; want completion in [%d, %d] and a prompt", row, delivered, lo, hi)
	}
	if !strings.Contains(srv.out.String(), "streams=3 error=gateway_crashed") && !strings.Contains(srv.out.String(), `"streams":3`) {
		t.Errorf("no line says the streams were recovered:\n%s", tail(srv.out.String(), 2000))
	}
	// Once more, cleanly: nothing is billed twice.
	srv.stop(syscall.SIGTERM)
	srv.start()
	waitHTTP(t, gw+"/healthz")
	time.Sleep(time.Second)
	if rows, err := usageNever(t, cfg); err != nil || rows["alpha"] != row {
		t.Fatalf("usage after another restart: %+v %v, want %+v", rows["alpha"], err, row)
	}
	t.Logf("%d events delivered over %d streams before SIGKILL; billed %+v", delivered, streams, row)
}
