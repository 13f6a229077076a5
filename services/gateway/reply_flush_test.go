package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
)

// blockingHandler holds every "request" access line until release is
// closed.
type blockingHandler struct {
	slog.Handler
	held    chan struct{}
	release chan struct{}
}

func (h *blockingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "request" {
		select {
		case h.held <- struct{}{}:
		default:
		}
		<-h.release
	}
	return h.Handler.Handle(ctx, r)
}

// chatBackend answers every request with one whole chat completion.
func chatBackend(t *testing.T) *httptest.Server {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	}))
	t.Cleanup(backend.Close)
	return backend
}

// chatGateway serves a gateway with opts in front of chatBackend, with one
// key (testKey). The caller closes the server.
func chatGateway(t *testing.T, opts Options) *httptest.Server {
	t.Helper()
	backend := chatBackend(t)
	cfg, err := config.Parse([]byte("backends: [{url: \""+backend.URL+"\"}]\napi_keys: [{key: \""+testKey+"\"}]\n"), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	opts.Config = cfg
	g, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	return httptest.NewServer(g.Handler())
}

// chatAsync sends one chat completion to base with testKey and delivers
// the reply's body, or the error, on the returned channel.
func chatAsync(base string) <-chan string {
	got := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[]}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	return got
}

// TestReplyBeforeAccessLine: a non-stream reply with a length reaches the
// client whole while the gateway is still writing its access line, so
// nothing after the reply's accounting delays it.
func TestReplyBeforeAccessLine(t *testing.T) {
	h := &blockingHandler{Handler: slog.NewTextHandler(io.Discard, nil), held: make(chan struct{}, 1), release: make(chan struct{})}
	srv := chatGateway(t, Options{Events: newSink(), Logger: slog.New(h)})
	defer srv.Close()
	defer close(h.release) // before srv.Close, which waits for the handler

	got := chatAsync(srv.URL)
	select {
	case <-h.held:
	case <-time.After(5 * time.Second):
		t.Fatal("no access line was written")
	}
	wantReply(t, got, "the access line")
}

// TestBackToBackRequestsKeepTheirSlot: a key with max_concurrent 1 that
// sends each request the moment it has the last reply is never refused:
// the lease is given back before the reply's last bytes, now that the
// reply no longer waits for the handler's return.
func TestBackToBackRequestsKeepTheirSlot(t *testing.T) {
	backend := chatBackend(t)
	cfg, err := config.Parse([]byte("backends: [{url: \""+backend.URL+"\"}]\napi_keys: [{key: \""+testKey+"\", limits: {max_concurrent: 1}}]\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := serveConfig(t, cfg)
	for i := range 200 {
		resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m","messages":[]}`, withKey())
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
}

// heldWakeSink is a durable event sink whose sender wake-up blocks until
// release is closed.
type heldWakeSink struct {
	*sink
	held    chan struct{}
	release chan struct{}
}

func (s *heldWakeSink) PublishDurable(ev *events.RequestCompleted) {
	if s.AppendDurable(ev) {
		s.Wake()
	}
}

func (s *heldWakeSink) AppendDurable(ev *events.RequestCompleted) bool {
	s.Publish(ev)
	return true
}

func (s *heldWakeSink) Wake() {
	select {
	case s.held <- struct{}{}:
	default:
	}
	<-s.release
}

// TestReplyBeforeSenderWake: the request's event is in the outbox before
// the reply's last bytes, but the event sender is woken only once the
// client has the whole reply, so starting it is no part of the reply's
// latency.
func TestReplyBeforeSenderWake(t *testing.T) {
	s := &heldWakeSink{sink: newSink(), held: make(chan struct{}, 1), release: make(chan struct{})}
	srv := chatGateway(t, Options{Events: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer srv.Close()
	defer close(s.release) // before srv.Close, which waits for the handler

	got := chatAsync(srv.URL)
	ev := s.next(t) // appended before the reply completes
	wantReply(t, got, "the event sender's wake-up")
	select {
	case <-s.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the event sender was never woken")
	}
	if ev.Usage.TotalTokens != 4 {
		t.Errorf("event usage %+v, want 4 tokens", ev.Usage)
	}
}

// wantReply fails t unless chatAsync's reply arrives whole while the server
// still holds back held.
func wantReply(t *testing.T, got <-chan string, held string) {
	t.Helper()
	select {
	case body := <-got:
		if !strings.Contains(body, `"content":"hi"`) {
			t.Fatalf("reply %q", body)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the reply waited for " + held)
	}
}

// TestSlowWholeReplyReachesTheClientAsItComes: a whole (non-stream) reply
// that an engine sends in pieces reaches the client piece by piece, not
// held in the server's buffers until 6 KB or the end have come; a client
// that leaves then is billed for the text its connection was sent.
func TestSlowWholeReplyReachesTheClientAsItComes(t *testing.T) {
	release := make(chan struct{})
	first := `{"id":"x","choices":[{"message":{"role":"assistant","content":"` + strings.Repeat("word ", 400)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for _, piece := range []string{first, strings.Repeat("more ", 400)} {
			_, _ = io.WriteString(w, piece)
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
		select { // the rest never comes while the client waits
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer backend.Close()
	defer close(release) // before the backend's Close waits for its handler
	gw, s := newTestGateway(t, backend.URL, "logging: {capture_response: true}\n")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	got := make(chan error, 1)
	var resp *http.Response
	go func() {
		var err error
		if resp, err = http.DefaultClient.Do(req); err == nil {
			_, err = io.ReadFull(resp.Body, make([]byte, len(first)))
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the reply's first piece did not reach the client while the engine was still sending")
	}
	resp.Body.Close() // the client leaves
	ev := s.next(t)
	if ev.Error != "client_closed_request" || ev.UsageSource != events.UsageSourceEstimated || ev.Usage.CompletionTokens == 0 {
		t.Errorf("event error %q, usage %+v (%s); want the delivered text billed, estimated", ev.Error, ev.Usage, ev.UsageSource)
	}
	// The captured reply is what the client got, not the piece held
	// back when it left.
	if c := ev.Response; c == nil || c.Content != first || !c.Truncated {
		t.Errorf("captured response %+v, want the first piece alone, marked truncated", c)
	}
}

// failFlushWriter is a connection's writer whose flush fails (the client
// has gone).
type failFlushWriter struct{ http.ResponseWriter }

func (failFlushWriter) FlushError() error { return io.ErrClosedPipe }

// TestRelayFlushSeesTheConnectionsError: the relay's flushes go past
// echo's Response, whose Flush swallows the connection's error: a flush
// that failed must end the relay (a stream's client gone) and not count
// its piece as sent.
func TestRelayFlushSeesTheConnectionsError(t *testing.T) {
	w := echo.NewResponse(failFlushWriter{httptest.NewRecorder()}, echo.New())
	if err := responseController(w).Flush(); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("a flush that failed on the connection: %v, want its error", err)
	}
}

// TestCaptureOfAReplyLeftIsRedactedWhole: the capture of a whole reply the
// client left is cut at what the client got after it is redacted, so that
// a secret the cut splits is replaced whole, not published in part.
func TestCaptureOfAReplyLeftIsRedactedWhole(t *testing.T) {
	release := make(chan struct{})
	secret := "sk-" + strings.Repeat("A", 15) + strings.Repeat("B", 15)
	first := `{"id":"x","choices":[{"message":{"role":"assistant","content":"` + strings.Repeat("word ", 400) + "the key is " + secret[:18]
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for _, piece := range []string{first, secret[18:] + strings.Repeat(" more", 400)} {
			_, _ = io.WriteString(w, piece)
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer backend.Close()
	defer close(release)
	gw, s := newTestGateway(t, backend.URL, "logging: {capture_response: true, redact: ['sk-[A-Za-z0-9]{20,}']}\n")
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, len(first))); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the client leaves mid-secret
	ev := s.next(t)
	if ev.Response == nil || !ev.Response.Truncated {
		t.Fatalf("captured response %+v, want it marked truncated", ev.Response)
	}
	if c := ev.Response.Content; strings.Contains(c, "AAAAAAAAAA") || strings.Contains(c, " more") {
		t.Errorf("the capture holds part of the secret, or text the client never got: %q", c[max(0, len(c)-80):])
	}
}

// TestRedactedAsGotKeepsWholeCharacters: the part of a reply a client got
// may end inside a character; the capture drops its first bytes.
func TestRedactedAsGotKeepsWholeCharacters(t *testing.T) {
	red, err := redact.Compile([]string{`sk-[A-Za-z0-9]{20,}`})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"content":"héllo wörld €"}`)
	for got := 0; got <= len(body); got++ {
		if out := redactedAsGot(red, body, got); !utf8.ValidString(out) || !strings.HasPrefix(string(body), out) || len(out) < got-3 {
			t.Errorf("got=%d: capture %q, want the valid start of the body, at most 3 bytes short", got, out)
		}
	}
}
