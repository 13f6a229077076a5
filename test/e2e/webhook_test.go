package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The webhook tests run the gateway and the notifier as separate processes
// against a JetStream server in the test process, with receivers written
// here that check every delivery independently of the notifier's code.

const webhookSecret = "whsec-e2e-0123456789abcdef"

// signatureTolerance is how far a signature's timestamp may be from the
// receiver's clock.
const signatureTolerance = 5 * time.Minute

// verifySignature checks an X-LLMProxy-Signature header
// ("t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>") as a receiver
// would, without the notifier package.
func verifySignature(secret, header string, body []byte, now time.Time) error {
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("malformed signature part %q", part)
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return fmt.Errorf("malformed signature header %q", header)
	}
	if d := now.Sub(time.Unix(unix, 0)); d > signatureTolerance || d < -signatureTolerance {
		return fmt.Errorf("signature timestamp %d is %s away from now", unix, d)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "." + string(body)))
	want := m.Sum(nil)
	for _, s := range sigs {
		got, err := hex.DecodeString(s)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("signature does not match")
}

// delivery is one POST a receiver took (answered 2xx).
type delivery struct {
	eventID string
	header  http.Header
	body    []byte
	payload map[string]any
	at      time.Time
}

// hookReceiver is a webhook receiver: it verifies the signature and the
// headers of every POST, answers with what respond says, and keeps the
// deliveries it accepted by event id (a repeat is counted, not stored
// twice).
type hookReceiver struct {
	t      testing.TB
	secret string
	// respond returns the status to answer before the body is accepted; 0
	// or 2xx accepts. It may set headers (Retry-After) and block.
	respond func(w http.ResponseWriter, r *http.Request) int
	// done unblocks handlers at the end of the test.
	done chan struct{}

	mu        sync.Mutex
	byID      map[string]delivery
	posts     int // every POST, whatever the answer
	accepted  int // POSTs answered 2xx, repeats included
	refused   int // POSTs answered otherwise
	inFlight  int
	badSig    []string
	badHeader []string
}

func newHookReceiver(t testing.TB, respond func(w http.ResponseWriter, r *http.Request) int) *hookReceiver {
	h := &hookReceiver{t: t, secret: webhookSecret, respond: respond, done: make(chan struct{}), byID: map[string]delivery{}}
	t.Cleanup(func() { close(h.done) })
	return h
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.posts++
	h.inFlight++
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.inFlight--
		h.mu.Unlock()
	}()

	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	id := r.Header.Get("X-LLMProxy-Event-Id")
	if err := verifySignature(h.secret, r.Header.Get("X-LLMProxy-Signature"), body, time.Now()); err != nil {
		h.mu.Lock()
		h.badSig = append(h.badSig, fmt.Sprintf("%s: %v", id, err))
		h.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var problems []string
	if r.Method != http.MethodPost {
		problems = append(problems, "method "+r.Method)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		problems = append(problems, "Content-Type "+ct)
	}
	if id == "" {
		problems = append(problems, "no X-LLMProxy-Event-Id")
	}
	var payload map[string]any
	if err := json.Unmarshal(body, &payload); err != nil {
		problems = append(problems, "body is not a JSON object: "+err.Error())
	}
	if len(problems) > 0 {
		h.mu.Lock()
		h.badHeader = append(h.badHeader, fmt.Sprintf("%s: %s", id, strings.Join(problems, "; ")))
		h.mu.Unlock()
		http.Error(w, "bad request", http.StatusUnauthorized)
		return
	}

	if h.respond != nil {
		if status := h.respond(w, r); status != 0 && (status < 200 || status > 299) {
			h.mu.Lock()
			h.refused++
			h.mu.Unlock()
			w.WriteHeader(status)
			return
		}
	}
	h.mu.Lock()
	h.accepted++
	if _, dup := h.byID[id]; !dup {
		h.byID[id] = delivery{eventID: id, header: r.Header.Clone(), body: body, payload: payload, at: time.Now()}
	}
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// distinct is the number of distinct event ids accepted.
func (h *hookReceiver) distinct() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.byID)
}

func (h *hookReceiver) state() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("distinct=%d posts=%d accepted=%d refused=%d in_flight=%d bad_sig=%d bad_header=%d",
		len(h.byID), h.posts, h.accepted, h.refused, h.inFlight, len(h.badSig), len(h.badHeader))
}

func (h *hookReceiver) deliveries() map[string]delivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]delivery, len(h.byID))
	for k, v := range h.byID {
		out[k] = v
	}
	return out
}

// checkClean fails the test when any POST had a bad signature or headers.
func (h *hookReceiver) checkClean(t testing.TB) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.badSig) > 0 {
		t.Errorf("%d deliveries failed signature verification, e.g. %s", len(h.badSig), h.badSig[0])
	}
	if len(h.badHeader) > 0 {
		t.Errorf("%d deliveries with bad headers or body, e.g. %s", len(h.badHeader), h.badHeader[0])
	}
}

// checkAll fails unless every client request id in ids arrived, and returns
// how many distinct event ids arrived.
func (h *hookReceiver) checkAll(t testing.TB, ids []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, d := range h.deliveries() {
		if id, _ := d.payload["client_request_id"].(string); id != "" {
			seen[id] = true
		}
	}
	var missing []string
	for _, id := range ids {
		if !seen[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d events never delivered: %v", len(missing), len(ids), missing)
	}
	if got := h.distinct(); got != len(ids) {
		t.Fatalf("%d distinct event ids delivered, want %d", got, len(ids))
	}
}

// hookEndpoint is one entry of webhooks[] in the config.
type hookEndpoint struct {
	name    string
	url     string
	timeout string
	// backoffMax is the endpoint's backoff_max, when set.
	backoffMax string
}

// webhookStack is a gateway and a notifier (separate processes) on a
// JetStream server of the test and the test Redis, with mockllm as the
// backend.
type webhookStack struct {
	gw       string // gateway base URL
	cfg      string // config path, for the CLI
	mock     string
	notifier *proc
	admin    string // notifier admin base URL
}

func startWebhookStack(t *testing.T, hooks ...hookEndpoint) *webhookStack {
	t.Helper()
	_, natsURL := natsServer(t)
	rurl, prefix := redisPrefix(t, "e2ehook")
	return startWebhookProcs(t, fmt.Sprintf("nats: { url: %q }\nredis: { url: %q, prefix: %q }", natsURL, rurl, prefix), false, hooks)
}

// startWebhookSingle runs the single binary (target all, embedded NATS)
// with the embedded server listening, so that the CLI reaches it with the
// same config.
func startWebhookSingle(t *testing.T, hooks ...hookEndpoint) *webhookStack {
	t.Helper()
	return startWebhookProcs(t, fmt.Sprintf("nats: { embedded_listen: %q }", freeAddr(t)), true, hooks)
}

func startWebhookProcs(t *testing.T, natsCfg string, single bool, hooks []hookEndpoint) *webhookStack {
	t.Helper()
	mock := startMock(t, "--tokens", "5")

	var b strings.Builder
	for _, h := range hooks {
		fmt.Fprintf(&b, "  - name: %q\n    url: %q\n    secret: %q\n    timeout: %s\n    max_attempts: 1000\n    max_age: 1h\n",
			h.name, h.url, webhookSecret, h.timeout)
		if h.backoffMax != "" {
			fmt.Fprintf(&b, "    backoff_max: %s\n", h.backoffMax)
		}
	}
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, fmt.Sprintf(`
listen: %q
data_dir: %q
%s
backends:
  - url: %q
webhooks:
%sapi_keys:
  - key: %q
    id: alpha
    user_id: user_a
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), natsCfg, mock, b.String(), keyAlpha))

	s := &webhookStack{gw: "http://" + listen, cfg: cfg, mock: mock}
	adminAddr := freeAddr(t)
	s.admin = "http://" + adminAddr
	if single {
		s.notifier = start(t, "llmproxy", "serve", "--config", cfg, "--admin-listen", adminAddr)
	} else {
		start(t, "llmproxy", "serve", "--config", cfg, "--target", "gateway")
		s.notifier = start(t, "llmproxy", "serve", "--config", cfg, "--target", "notifier", "--admin-listen", adminAddr)
	}
	waitHTTP(t, s.gw+"/healthz")
	waitHTTP(t, s.admin+"/readyz")
	return s
}

// send makes n chat requests through the gateway, 8 at a time, with
// request ids prefix-0…prefix-(n-1); every third one streams. It returns
// the request ids once every request has been answered 200.
func (s *webhookStack) send(t testing.TB, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			req, _ := http.NewRequest(http.MethodPost, s.gw+"/v1/chat/completions", bytes.NewReader(chatBody(i, i%3 == 1, true)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+keyAlpha)
			req.Header.Set("X-Request-Id", ids[i])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", ids[i], err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("%s: %d %s", ids[i], resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ids
}

// metric returns the sum of the samples of a metric on the notifier's
// /metrics (labels ignored), or -1 when it is absent.
func (s *webhookStack) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum, found := 0.0, false
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum, found = sum+v, true
		}
	}
	if !found {
		return -1
	}
	return sum
}

// lateListener serves h on addr from when start is called.
type lateListener struct {
	addr string
	srv  *http.Server
}

func (l *lateListener) start(t testing.TB, h http.Handler) {
	t.Helper()
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		t.Fatalf("listen %s: %v", l.addr, err)
	}
	l.srv = &http.Server{Handler: h}
	go func() { _ = l.srv.Serve(ln) }()
	t.Cleanup(func() { _ = l.srv.Close() })
}

// TestWebhookReceiverDownSixtySeconds: the receiver is down for 60 s — not
// listening at all for the first 10 s, then answering 503 with
// Retry-After: 1 — while events keep coming; once it is up every event is
// delivered, none lost. While nothing listens the retries back off without
// a Retry-After: backoff_max 2s bounds how long after the outage an event
// may still wait (with the default 5m cap an event that drew a long wait
// in the first 10 s is delivered minutes later, as it should be).
//
// Most of its minute is waiting, so it runs beside the other parallel
// tests (they start once the sequential ones are done).
func TestWebhookReceiverDownSixtySeconds(t *testing.T) {
	t.Parallel()
	const outage = 60 * time.Second
	addr := freeAddr(t)
	downSince := time.Now()
	upAt := downSince.Add(outage)
	recv := newHookReceiver(t, func(w http.ResponseWriter, _ *http.Request) int {
		if time.Now().Before(upAt) {
			w.Header().Set("Retry-After", "1")
			return http.StatusServiceUnavailable
		}
		return 0
	})
	s := startWebhookStack(t, hookEndpoint{name: "billing", url: "http://" + addr + "/hook", timeout: "2s", backoffMax: "2s"})

	// Phase 1: nothing listens.
	ids := s.send(t, "down-refused", 20)
	ll := &lateListener{addr: addr}
	time.Sleep(time.Until(downSince.Add(10 * time.Second)))
	// Phase 2: listening, 503 until upAt.
	ll.start(t, recv)
	time.Sleep(time.Until(downSince.Add(30 * time.Second)))
	ids = append(ids, s.send(t, "down-503", 20)...)
	time.Sleep(time.Until(upAt))
	if n := recv.distinct(); n != 0 {
		t.Fatalf("%d events accepted during the outage", n)
	}
	t.Logf("during the outage: %s", recv.state())

	eventually(t, 15*time.Second, "every event delivered after the outage", func() (bool, string) {
		return recv.distinct() == len(ids), recv.state()
	})
	took := time.Since(upAt)
	recv.checkAll(t, ids)
	recv.checkClean(t)
	if dlq := s.dlqList(t); len(dlq) != 0 {
		t.Fatalf("dead letters after a 60 s outage: %+v", dlq)
	}
	if v := s.metric(t, "llmproxy_webhook_retries_total"); v <= 0 {
		t.Errorf("llmproxy_webhook_retries_total = %v after an outage, want > 0", v)
	}
	if v := s.metric(t, "llmproxy_webhook_success_total"); v < float64(len(ids)) {
		t.Errorf("llmproxy_webhook_success_total = %v, want ≥ %d", v, len(ids))
	}
	t.Logf("receiver down %s (10 s refused, then 503): %d events, all delivered %s after it came up; %s; test ran %s",
		outage, len(ids), took.Round(10*time.Millisecond), recv.state(), time.Since(downSince).Round(time.Second))
}

// TestWebhookNotifierKilledMidDelivery: the notifier is killed with SIGKILL
// while a slow receiver (200 ms a call, 4 at a time) takes 100 events, and
// restarted: every event arrives; repeats are deduped by event id.
func TestWebhookNotifierKilledMidDelivery(t *testing.T) {
	const n = 100
	sem := make(chan struct{}, 4)
	recv := newHookReceiver(t, func(http.ResponseWriter, *http.Request) int {
		sem <- struct{}{}
		defer func() { <-sem }()
		time.Sleep(200 * time.Millisecond)
		return 0
	})
	srv := httptest.NewServer(recv)
	defer srv.Close()
	s := startWebhookStack(t, hookEndpoint{name: "slow-billing", url: srv.URL, timeout: "5s"})

	ids := s.send(t, "kill", n)
	eventually(t, 60*time.Second, "deliveries under way", func() (bool, string) {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		return len(recv.byID) >= 20 && recv.inFlight > 0, fmt.Sprintf("%d delivered, %d in flight", len(recv.byID), recv.inFlight)
	})
	s.notifier.stop(syscall.SIGKILL)
	atKill := recv.state()
	if recv.distinct() >= n {
		t.Fatalf("every event was delivered before the kill (%s)", atKill)
	}
	killedAt := time.Now()
	s.notifier.start()

	eventually(t, 90*time.Second, "every event after the restart", func() (bool, string) {
		return recv.distinct() == n, recv.state()
	})
	recv.checkAll(t, ids)
	recv.checkClean(t)
	if dlq := s.dlqList(t); len(dlq) != 0 {
		t.Fatalf("dead letters: %+v", dlq)
	}
	t.Logf("killed at %s; all %d distinct events %s after the kill; final %s",
		atKill, n, time.Since(killedAt).Round(10*time.Millisecond), recv.state())
}

// deadLetter is one row of `llmproxy webhooks dlq list --json`.
type deadLetter struct {
	Endpoint   string          `json:"endpoint"`
	URL        string          `json:"url"`
	EventID    string          `json:"event_id"`
	Reason     string          `json:"reason"`
	Attempts   int             `json:"attempts"`
	LastStatus int             `json:"last_status"`
	LastError  string          `json:"last_error"`
	FailedAt   time.Time       `json:"failed_at"`
	Event      json.RawMessage `json:"event"`
}

func (s *webhookStack) dlqList(t testing.TB) []deadLetter {
	t.Helper()
	out, err := runCLI(t, "webhooks", "dlq", "list", "--config", s.cfg, "--json")
	if err != nil {
		t.Fatalf("dlq list: %v", err)
	}
	var list []deadLetter
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("dlq list --json: %v in %q", err, out)
	}
	if strings.TrimSpace(out) == "null" {
		t.Errorf("dlq list --json printed null for an empty DLQ, want []")
	}
	return list
}

// TestWebhookPermanentFailureDLQAndReplay: a 400 dead-letters the event at
// once; after the receiver is fixed, `webhooks dlq replay` delivers it and
// the DLQ is empty.
func TestWebhookPermanentFailureDLQAndReplay(t *testing.T) {
	t.Run("distributed", func(t *testing.T) { testDLQAndReplay(t, startWebhookStack) })
	// The single binary's own config reaches its embedded NATS through
	// nats.embedded_listen.
	t.Run("single-binary", func(t *testing.T) { testDLQAndReplay(t, startWebhookSingle) })
}

func testDLQAndReplay(t *testing.T, startStack func(*testing.T, ...hookEndpoint) *webhookStack) {
	var mu sync.Mutex
	broken := true
	recv := newHookReceiver(t, func(w http.ResponseWriter, _ *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		if broken {
			return http.StatusBadRequest
		}
		return 0
	})
	srv := httptest.NewServer(recv)
	defer srv.Close()
	s := startStack(t, hookEndpoint{name: "strict", url: srv.URL + "/usage", timeout: "5s"})

	if got := s.dlqList(t); len(got) != 0 {
		t.Fatalf("DLQ not empty at the start: %+v", got)
	}
	ids := s.send(t, "dlq", 1)
	sent := time.Now()
	var list []deadLetter
	eventually(t, 20*time.Second, "the event in the DLQ", func() (bool, string) {
		list = s.dlqList(t)
		return len(list) == 1, fmt.Sprintf("%d dead letters; %s", len(list), recv.state())
	})
	t.Logf("dead letter listed %s after the request", time.Since(sent).Round(10*time.Millisecond))
	d := list[0]
	if d.Reason != "permanent_failure" || d.Attempts != 1 || d.LastStatus != 400 || d.Endpoint != "strict" || d.EventID == "" {
		t.Fatalf("dead letter = %+v; want reason permanent_failure, attempts 1, last_status 400, endpoint strict", d)
	}
	// The URL is the endpoint's scheme and host: a path may hold a secret.
	if d.URL != srv.URL || d.LastError == "" || d.FailedAt.IsZero() {
		t.Errorf("dead letter lacks url, last_error or failed_at: %+v", d)
	}
	var ev map[string]any
	if err := json.Unmarshal(d.Event, &ev); err != nil || ev["client_request_id"] != ids[0] {
		t.Fatalf("dead letter's event is not the request's: %v %s", err, d.Event)
	}
	recv.mu.Lock()
	posts := recv.posts
	recv.mu.Unlock()
	if posts != 1 {
		t.Fatalf("receiver saw %d POSTs for a 400, want 1 (no retry)", posts)
	}

	// The human-readable list shows it too.
	out, err := runCLI(t, "webhooks", "dlq", "list", "--config", s.cfg)
	if err != nil || !strings.Contains(out, d.EventID) || !strings.Contains(out, "permanent_failure") {
		t.Fatalf("dlq list: %v\n%s", err, out)
	}

	// Replaying while the receiver still refuses keeps the dead letter.
	if out, err := runCLI(t, "webhooks", "dlq", "replay", "--config", s.cfg); err == nil {
		t.Fatalf("replay to a receiver that still answers 400 succeeded: %s", out)
	}
	if got := s.dlqList(t); len(got) != 1 {
		t.Fatalf("after a failed replay: %d dead letters, want 1", len(got))
	}

	mu.Lock()
	broken = false
	mu.Unlock()
	out, err = runCLI(t, "webhooks", "dlq", "replay", "--config", s.cfg, "--id", d.EventID)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	if !strings.Contains(out, "replayed 1 dead letter") {
		t.Errorf("replay said %q", out)
	}
	if recv.distinct() != 1 {
		t.Fatalf("after replay: %s", recv.state())
	}
	got := recv.deliveries()[d.EventID]
	if got.eventID != d.EventID {
		t.Fatalf("replayed event arrived under another id: %v", recv.deliveries())
	}
	recv.checkAll(t, ids)
	recv.checkClean(t)
	if list := s.dlqList(t); len(list) != 0 {
		t.Fatalf("DLQ after replay: %+v", list)
	}
}

// TestWebhookSlowReceiverDoesNotDelayFast: one endpoint takes 5 s a call;
// the other gets every event within a couple of seconds.
func TestWebhookSlowReceiverDoesNotDelayFast(t *testing.T) {
	const n = 20
	slow := newHookReceiver(t, func(w http.ResponseWriter, r *http.Request) int {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
		return 0
	})
	fast := newHookReceiver(t, nil)
	slowSrv, fastSrv := httptest.NewServer(slow), httptest.NewServer(fast)
	defer slowSrv.Close()
	defer fastSrv.Close()
	s := startWebhookStack(t,
		hookEndpoint{name: "slow", url: slowSrv.URL, timeout: "10s"},
		hookEndpoint{name: "fast", url: fastSrv.URL, timeout: "5s"})

	// Warm up both endpoints, so that what is measured is delivery.
	s.send(t, "warm", 1)
	eventually(t, 30*time.Second, "warm-up at both", func() (bool, string) {
		return fast.distinct() == 1 && slow.distinct() == 1, fast.state() + " / " + slow.state()
	})

	ids := s.send(t, "fast", n)
	answered := time.Now()
	eventually(t, 10*time.Second, "every event at the fast endpoint", func() (bool, string) {
		return fast.distinct() == n+1, fast.state()
	})
	took := time.Since(answered)
	slowDone := slow.distinct() - 1
	if took > 3*time.Second {
		t.Errorf("the fast endpoint got all %d events %s after the last request; want ≤ 3s", n, took)
	}
	if slowDone >= n {
		t.Errorf("the slow endpoint already had all %d events when the fast one did", n)
	}
	eventually(t, 60*time.Second, "every event at the slow endpoint", func() (bool, string) {
		return slow.distinct() == n+1, slow.state()
	})
	fast.checkAll(t, append(ids, "warm-0"))
	slow.checkAll(t, append(ids, "warm-0"))
	fast.checkClean(t)
	slow.checkClean(t)
	t.Logf("fast endpoint: all %d events %s after the last response (slow endpoint then had %d)",
		n, took.Round(10*time.Millisecond), slowDone)
}

// TestWebhookSignatureAndBody: every delivery carries a signature the
// receiver recomputes, a tampered body or a wrong secret fails it, and the
// body has every upstream webhook field with its JSON type, the key masked.
func TestWebhookSignatureAndBody(t *testing.T) {
	recv := newHookReceiver(t, nil)
	srv := httptest.NewServer(recv)
	defer srv.Close()
	s := startWebhookStack(t, hookEndpoint{name: "signed", url: srv.URL, timeout: "5s"})

	ids := s.send(t, "sig", 6)
	eventually(t, 30*time.Second, "deliveries", func() (bool, string) {
		return recv.distinct() == len(ids), recv.state()
	})
	recv.checkAll(t, ids)
	recv.checkClean(t)

	streams := map[bool]int{}
	for id, d := range recv.deliveries() {
		p := d.payload
		checkWebhookPayload(t, id, p, keyAlpha, webhookSecret)
		if d.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", id, d.header.Get("Content-Type"))
		}
		if rid := p["request_id"]; rid != id {
			t.Errorf("X-LLMProxy-Event-Id %q is not the body's request_id %v", id, rid)
		}
		if p["user_id"] != "user_a" || p["endpoint"] != "/v1/chat/completions" || p["status_code"] != 200.0 || p["backend_url"] != s.mock {
			t.Errorf("%s: user_id/endpoint/status_code/backend_url = %v %v %v %v", id, p["user_id"], p["endpoint"], p["status_code"], p["backend_url"])
		}
		if _, err := time.Parse(time.RFC3339, p["timestamp"].(string)); err != nil {
			t.Errorf("%s: timestamp %v: %v", id, p["timestamp"], err)
		}
		u := p["usage"].(map[string]any)
		if u["total_tokens"] != u["prompt_tokens"].(float64)+u["completion_tokens"].(float64) || u["prompt_tokens"].(float64) == 0 {
			t.Errorf("%s: usage %v", id, u)
		}
		if rb := p["request_body"].(map[string]any); rb["model"] != "mock-model" {
			t.Errorf("%s: request_body %v", id, rb)
		}
		stream := p["is_stream"].(bool)
		streams[stream]++
		k := p["api_key"].(string)
		if !strings.HasPrefix(k, "sk-") || len(k) >= len(keyAlpha) {
			t.Errorf("%s: api_key %q does not look like a masked key", id, k)
		}

		// The signature fails for any other body or secret.
		sig := d.header.Get("X-LLMProxy-Signature")
		now := time.Now()
		if err := verifySignature(webhookSecret, sig, d.body, now); err != nil {
			t.Fatalf("%s: stored delivery does not verify: %v", id, err)
		}
		tampered := bytes.Replace(d.body, []byte(`"prompt_tokens":`), []byte(`"prompt_tokens":1`), 1)
		if bytes.Equal(tampered, d.body) {
			t.Fatalf("%s: could not tamper with %s", id, d.body)
		}
		if err := verifySignature(webhookSecret, sig, tampered, now); err == nil {
			t.Errorf("%s: tampered body verified", id)
		}
		if err := verifySignature(webhookSecret, sig, append(append([]byte{}, d.body...), ' '), now); err == nil {
			t.Errorf("%s: body with a trailing space verified", id)
		}
		if err := verifySignature("another-secret", sig, d.body, now); err == nil {
			t.Errorf("%s: wrong secret verified", id)
		}
		if err := verifySignature(webhookSecret, sig, d.body, now.Add(time.Hour)); err == nil {
			t.Errorf("%s: an hour-old signature verified", id)
		}
	}
	if streams[true] == 0 || streams[false] == 0 {
		t.Errorf("is_stream not both true and false across streamed and plain requests: %v", streams)
	}

	// A tampered request sent to the receiver itself is refused.
	var d delivery
	for _, d = range recv.deliveries() {
		break
	}
	tampered := bytes.Replace(d.body, []byte(`"user_a"`), []byte(`"user_b"`), 1)
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, srv.URL, bytes.NewReader(tampered))
	for k, v := range d.header {
		req.Header[k] = v
	}
	req.Header.Del("Content-Length")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("tampered POST answered %d, want 401", resp.StatusCode)
	}
	recv.mu.Lock()
	if len(recv.badSig) != 1 {
		t.Errorf("receiver recorded %d signature failures, want 1 (the tampered POST)", len(recv.badSig))
	}
	recv.mu.Unlock()
}
