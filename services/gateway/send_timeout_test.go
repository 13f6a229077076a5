package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestStalledClientIsCut: a client that stops reading a stream but keeps
// its connection open is cut once nothing could be sent to it for
// server.send_timeout: the backend's request is cancelled, the request is
// recorded (what was delivered, estimated) and the key's concurrency slot
// is free again, instead of all three being held for as long as the
// client's connection stays open.
func TestStalledClientIsCut(t *testing.T) {
	cancelled := make(chan struct{})
	chunk := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + strings.Repeat("word ", 200) + "\"}}]}\n\n"
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, _ := io.ReadAll(r.Body); !bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for {
			if _, err := fmt.Fprint(w, chunk); err != nil {
				break
			}
			f.Flush()
			if r.Context().Err() != nil {
				break
			}
		}
		close(cancelled)
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, limits: {max_concurrent: 1}}]\nserver: {send_timeout: 300ms}\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gw, s := serveConfig(t, cfg)

	conn, err := net.Dial("tcp", strings.TrimPrefix(gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	body := `{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", testKey, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4096), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", resp, err)
	}
	// The client reads no further and keeps the connection open.

	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's request of a stalled client was never cancelled")
	}
	ev := s.next(t)
	if ev.Error != "client_send_timeout" || ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens == 0 {
		t.Fatalf("event of the stalled stream: error %q, usage %+v (%s)", ev.Error, ev.Usage, ev.UsageSource)
	}
	if r, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[]}`, withKey()); r.StatusCode != http.StatusOK {
		t.Fatalf("the stalled stream still holds the key's slot: %d %s", r.StatusCode, b)
	}
}

// bigSendBuffers sets every accepted connection's send buffer to n bytes,
// as Linux's autotuning grows a fast link's: a write blocked on a full
// buffer then waits until half of it has gone.
type bigSendBuffers struct {
	net.Listener
	n int
}

func (l bigSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.n)
	}
	return c, err
}

// TestSlowReaderIsNotCut: a client that keeps taking bytes, slower than
// the gateway sends them, is not cut by server.send_timeout, even when a
// write waits longer than that for a large send buffer to drain: what
// counts is that nothing could be sent for send_timeout. One that leaves
// midway is recorded as a client that left.
func TestSlowReaderIsNotCut(t *testing.T) {
	const size = 3 << 20
	reply := `{"choices":[{"message":{"content":"` + strings.Repeat("word ", size/5) + `"}}],"usage":{"prompt_tokens":1,"completion_tokens":7,"total_tokens":8}}`
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, reply)
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nserver: {send_timeout: 400ms}\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := newSink()
	g, err := New(Options{Config: cfg, Events: s})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(t.Context())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: g.Handler(), ConnContext: g.ConnContext}
	go func() { _ = srv.Serve(bigSendBuffers{ln, 1 << 20}) }()
	t.Cleanup(func() { _ = srv.Close() })

	// About 1.2 MB/s: the whole reply takes some 3 s, a write on the full
	// buffer (half of 2 MB to drain) close to a second, over twice the
	// send_timeout.
	slowRead := func(leaveAfter time.Duration) int {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.(*net.TCPConn).SetReadBuffer(32 << 10)
		body := `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", testKey, len(body), body)
		got := 0
		buf := make([]byte, 16<<10)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for start := time.Now(); got < size && (leaveAfter == 0 || time.Since(start) < leaveAfter); {
			<-tick.C
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := io.ReadFull(conn, buf[:12<<10])
			got += n
			if err != nil {
				break
			}
		}
		return got
	}
	got := slowRead(0)
	if ev := s.next(t); ev.Error != "" || got < size {
		t.Fatalf("a slow reader that kept reading: %d of %d bytes, event error %q", got, size, ev.Error)
	}
	got = slowRead(700 * time.Millisecond)
	if ev := s.next(t); ev.Error != "client_closed_request" || got >= size {
		t.Fatalf("a slow reader that left after %d bytes: event error %q, want client_closed_request", got, ev.Error)
	}
}

// TestSlowReaderLeavingIsNoTimeout: a write that fails (the client gone)
// past send_timeout from the deadline's last setting by the relay, but
// before the deadline the watch moved on for a client that kept reading,
// is a client that left, not one cut by send_timeout.
func TestSlowReaderLeavingIsNoTimeout(t *testing.T) {
	const timeout = time.Second
	p := newSendPace(nil, timeout, nil)
	p.armed = time.Now().Add(-3 * timeout)
	p.watch = &paceWatch{timeout: timeout, until: time.Now().Add(timeout / 2)}
	if got := p.clientWriteError(syscall.ECONNRESET); got != "client_closed_request" {
		t.Fatalf("a reset before the deadline the watch set: %s, want client_closed_request", got)
	}
	p.watch.until = time.Now().Add(-timeout / 2)
	if got := p.clientWriteError(syscall.ECONNRESET); got != "client_send_timeout" {
		t.Fatalf("a failed write past the deadline the watch set: %s, want client_send_timeout", got)
	}
}

// TestPaceWatchSeesProgressAcrossArms: bytes the client acknowledged
// between two looks count though the relay moved the deadline meanwhile
// (a write that ended, the next one blocked at once): the watch's looks
// are every send_timeout/8, and each compares with the last.
func TestPaceWatchSeesProgressAcrossArms(t *testing.T) {
	var acked atomic.Uint64
	was := ackedBytes
	ackedBytes = func(net.Conn) (uint64, bool) { return acked.Load(), true }
	t.Cleanup(func() { ackedBytes = was })
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	const timeout = 800 * time.Millisecond
	p := newSendPace(http.NewResponseController(deadlineRecorder{httptest.NewRecorder()}), timeout, c1)
	defer p.done()
	p.arm()
	time.Sleep(timeout/8 + 50*time.Millisecond) // the first look: a baseline
	p.arm()                                     // a write ended; the next one waits
	acked.Add(100 << 10)                        // the client takes a step
	time.Sleep(timeout/8 + 50*time.Millisecond)
	p.watch.mu.Lock()
	until := p.watch.until
	p.watch.mu.Unlock()
	if until.IsZero() {
		t.Fatal("the client's step after the relay moved the deadline was not seen at the next look")
	}
}
