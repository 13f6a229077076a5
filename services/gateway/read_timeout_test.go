package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// readTimeoutGateway serves a gateway of yaml and returns it with its
// event sink.
func readTimeoutGateway(t *testing.T, yaml string) (*Gateway, *httptest.Server, *sink) {
	t.Helper()
	s := newSink()
	g, err := New(Options{Config: parseConfig(t, yaml), Events: s})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	g.Start(ctx)
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return g, srv, s
}

// wedgedBackend serves wedgedHandler until the test ends.
func wedgedBackend(t *testing.T, first bool, cut chan<- struct{}) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(wedgedHandler(first, cut))
	t.Cleanup(srv.Close)
	return srv
}

// wedgedHandler answers a non-streamed request at once; a stream gets its
// head, then the first event when first is set, and then nothing until the
// gateway gives up on it, which closes cut.
func wedgedHandler(first bool, cut chan<- struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if b, _ := io.ReadAll(r.Body); !bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		if first {
			_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello there, how are you\"}}]}\n\n")
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			close(cut)
		case <-time.After(10 * time.Second):
		}
	}
}

// TestReadTimeoutCutsAStalledStream: a backend that sends a stream's head
// and one event and then nothing, its connection left open, has the
// stream ended about read_timeout later with the in-band error event; the
// event records backend_read_timeout and bills what was delivered, and the
// backend's request, its upstream slot and the key's concurrency slot are
// all free again.
//
// With a send_timeout shorter than the silence, the error ending still
// reaches the client: it is a write of its own, not one the silence
// overran.
func TestReadTimeoutCutsAStalledStream(t *testing.T) {
	for _, send := range []string{"60s", "100ms"} {
		t.Run("send_timeout "+send, func(t *testing.T) { testReadTimeoutCutsAStalledStream(t, send) })
	}
}

func testReadTimeoutCutsAStalledStream(t *testing.T, send string) {
	const read = 300 * time.Millisecond
	cut := make(chan struct{})
	backend := wedgedBackend(t, true, cut)
	g, gw, s := readTimeoutGateway(t, fmt.Sprintf(`
server: {send_timeout: %s}
backends: [{url: %q, name: wedged, read_timeout: %s}]
api_keys: [{key: %q, limits: {max_concurrent: 1}}]
`, send, backend.URL, read, testKey))

	client := &http.Client{Timeout: 10 * time.Second}
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("stream: %v after %v (got %q)", err, took, body)
	}
	if resp.StatusCode != 200 || !strings.Contains(string(body), "hello there") ||
		!strings.HasSuffix(string(body), string(backendFailedEndings.openai)) {
		t.Fatalf("%d %q; want the first event and the error ending", resp.StatusCode, body)
	}
	if took < read || took > read+5*time.Second {
		t.Fatalf("the stream ended after %v; want about read_timeout, %v", took, read)
	}
	ev := s.next(t)
	if ev.Error != "backend_read_timeout" || ev.StatusCode != 200 || ev.UsageSource != estimatedSource || ev.Usage.CompletionTokens == 0 {
		t.Fatalf("event: error %q, status %d, usage %+v (%s)", ev.Error, ev.StatusCode, ev.Usage, ev.UsageSource)
	}
	assertTryEnded(t, g, gw, "wedged", cut)
}

// TestReadTimeoutBeforeTheFirstByte: a backend that sends a stream's head
// at once and then nothing (as vLLM and TGI do, before queueing and
// prefill) fails the try about read_timeout later as one whose head never
// came, nothing having gone to the client: routing.retry retries it as a
// timeout, and without a retry the client gets 504 backend_timeout; the
// backend's request, its upstream slot and the key's concurrency slot are
// free again.
func TestReadTimeoutBeforeTheFirstByte(t *testing.T) {
	const read = 300 * time.Millisecond
	for _, c := range []struct {
		name, retry string
		status      int
		tries       int64
	}{
		{"retried as a timeout", "{enabled: true, max_retries: 1, initial_wait: 10ms, max_wait: 20ms}", 200, 2},
		{"not retried", "{enabled: true, max_retries: 1, on: [connect, 5xx]}", 504, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var tries atomic.Int64
			cut := make(chan struct{})
			wedged := wedgedHandler(false, cut)
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if b, _ := io.ReadAll(r.Body); bytes.Contains(b, []byte(`"stream":true`)) && tries.Add(1) == 1 {
					r.Body = io.NopCloser(bytes.NewReader(b))
					wedged(w, r)
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
			}))
			t.Cleanup(backend.Close)
			g, gw, s := readTimeoutGateway(t, fmt.Sprintf(`
backends: [{url: %q, name: wedged, read_timeout: %s}]
routing: {retry: %s}
api_keys: [{key: %q, limits: {max_concurrent: 1}}]
`, backend.URL, read, c.retry, testKey))

			start := time.Now()
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`, withKey())
			took := time.Since(start)
			if resp.StatusCode != c.status || tries.Load() != c.tries {
				t.Fatalf("%d %s after %d tries; want %d after %d", resp.StatusCode, body, tries.Load(), c.status, c.tries)
			}
			if took < read || took > read+5*time.Second {
				t.Fatalf("answered after %v; want about read_timeout, %v", took, read)
			}
			ev := s.next(t)
			if c.status == 504 {
				if !strings.Contains(string(body), `"code":"backend_timeout"`) || ev.Error != "backend_timeout" || ev.StatusCode != 504 || ev.Usage.TotalTokens != 0 {
					t.Fatalf("%s; event error %q, status %d, usage %+v", body, ev.Error, ev.StatusCode, ev.Usage)
				}
			} else if !strings.Contains(string(body), `"hi"`) || ev.Error != "" || ev.StatusCode != 200 {
				t.Fatalf("%s; event error %q, status %d", body, ev.Error, ev.StatusCode)
			}
			assertTryEnded(t, g, gw, "wedged", cut)
		})
	}
}

// TestBrokenOffBeforeTheFirstByte: a backend that sends a stream's head and
// closes the connection before any of its body fails the try as one that
// never answered (502, retried as routing.retry's connect class), since
// nothing has gone to the client. The client got a 200 holding nothing but
// the in-band error event, and another backend was never tried.
//
// A reply without a length (no Content-Length, not chunked: it ends where
// the connection does) is broken off the same way when the connection
// closes before its first byte: it was relayed as an empty 200.
func TestBrokenOffBeforeTheFirstByte(t *testing.T) {
	const retried, notRetried = "{enabled: true, max_retries: 1, initial_wait: 10ms, max_wait: 20ms}", "{enabled: false}"
	const chunked, untilClose = "Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n", "Content-Type: text/event-stream\r\n"
	for _, c := range []struct {
		name, retry, head string
		stream            bool
		status            int
		tries             int64
	}{
		{"retried", retried, chunked, true, 200, 2},
		{"not retried", notRetried, chunked, true, 502, 1},
		{"no length, retried", retried, untilClose, true, 200, 2},
		{"no length, not retried", notRetried, untilClose, true, 502, 1},
		{"no length, not streamed", notRetried, "Content-Type: application/json\r\n", false, 502, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var tries atomic.Int64
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				if tries.Add(1) == 1 {
					conn, _, err := http.NewResponseController(w).Hijack()
					if err != nil {
						t.Error(err)
						return
					}
					_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\n"+c.head+"\r\n")
					conn.Close()
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
			}))
			t.Cleanup(backend.Close)
			g, gw, s := readTimeoutGateway(t, fmt.Sprintf(`
backends: [{url: %q, name: broken}]
routing: {retry: %s}
api_keys: [{key: %q, limits: {max_concurrent: 1}}]
`, backend.URL, c.retry, testKey))
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", fmt.Sprintf(`{"model":"m","stream":%t,"messages":[{"role":"user","content":"hi"}]}`, c.stream), withKey())
			if resp.StatusCode != c.status || tries.Load() != c.tries {
				t.Fatalf("%d %s after %d tries; want %d after %d", resp.StatusCode, body, tries.Load(), c.status, c.tries)
			}
			ev := s.next(t)
			if c.status == 502 {
				if !strings.Contains(string(body), `"error"`) || ev.StatusCode != 502 || ev.Usage.TotalTokens != 0 {
					t.Fatalf("%s; event error %q, status %d, usage %+v", body, ev.Error, ev.StatusCode, ev.Usage)
				}
			} else if !strings.Contains(string(body), `"hi"`) || ev.Error != "" || ev.StatusCode != 200 {
				t.Fatalf("%s; event error %q, status %d", body, ev.Error, ev.StatusCode)
			}
			assertTryEnded(t, g, gw, "broken", nil)
		})
	}
}

// assertTryEnded checks that a try at backend that was cut or failed has
// ended: the backend's request was cancelled (cut closed; nil: not
// watched), the upstream counts nothing in flight and the key's
// concurrency slot serves the next request.
func assertTryEnded(t *testing.T, g *Gateway, gw *httptest.Server, backend string, cut <-chan struct{}) {
	t.Helper()
	if cut != nil {
		select {
		case <-cut:
		case <-time.After(5 * time.Second):
			t.Fatal("the backend's request was never cancelled")
		}
	}
	if n := g.rt.Load().pool.ByName(backend).InFlight(); n != 0 {
		t.Fatalf("the backend still counts %d requests in flight", n)
	}
	if r, b := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m","messages":[]}`, withKey()); r.StatusCode != http.StatusOK {
		t.Fatalf("the ended try still holds the key's slot: %d %s", r.StatusCode, b)
	}
}

// TestStreamEndedButConnectionNot: a backend that sends a stream whole,
// its last event included, then holds the connection open (or closes it
// without the chunked ending) has its stream end for the client within a
// moment of the last event, as sent: no error event after it, none in the
// record, not a wait for read_timeout.
func TestStreamEndedButConnectionNot(t *testing.T) {
	for _, c := range []struct{ name, then string }{{"held open", "hold"}, {"closed without its ending", "close"}} {
		t.Run(c.name, func(t *testing.T) {
			release := make(chan struct{})
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Error(err)
					return
				}
				defer conn.Close()
				chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
					chunk("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")+
					chunk("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n")+
					chunk("data: [DONE]\n\n"))
				if c.then == "hold" {
					select {
					case <-release:
					case <-r.Context().Done():
					}
				}
			}))
			t.Cleanup(backend.Close)
			t.Cleanup(func() { close(release) })
			_, gw, s := readTimeoutGateway(t, fmt.Sprintf("backends: [{url: %q, name: lingering, read_timeout: 60s}]\napi_keys: [{key: %q}]\n", backend.URL, testKey))
			client := &http.Client{Timeout: 20 * time.Second}
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("the stream did not end well before read_timeout: %v after %q", err, body)
			}
			if strings.Contains(string(body), "error") || !strings.HasSuffix(string(body), "data: [DONE]\n\n") || strings.Count(string(body), "[DONE]") != 1 {
				t.Fatalf("the client got %q; want the stream as sent, ending with its one [DONE]", body)
			}
			if ev := s.next(t); ev.Error != "" || ev.Usage.TotalTokens != 4 || ev.UsageSource != "backend" {
				t.Fatalf("event error %q, usage %+v (%s); want the backend's usage, no error", ev.Error, ev.Usage, ev.UsageSource)
			}
		})
	}
}
