package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stuckBackend accepts connections and never reads from them, as an
// engine whose server has stopped reading does; the connections are held
// open until the test ends.
func stuckBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestBackendThatStopsReadingTimesOut: a request whose body the backend
// never reads (a body larger than the socket buffers, so the write
// blocks) fails after the backend's write_timeout with 504, and is retried
// as a connect failure, since the backend never had the whole request. It
// hung for as long as the client waited.
func TestBackendThatStopsReadingTimesOut(t *testing.T) {
	stuck := stuckBackend(t)
	var goodHits atomic.Int64
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		goodHits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	t.Cleanup(good.Close)
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 24<<20) + `"}]}`
	client := &http.Client{Timeout: 10 * time.Second}
	for _, c := range []struct {
		name, retry string
		want        int
	}{
		{"no retries", "{enabled: false}", http.StatusGatewayTimeout},
		{"retried as a connect failure", "{enabled: true, max_retries: 1, initial_wait: 1ms, on: [connect]}", http.StatusOK},
		{"not a timeout of an answer", "{enabled: true, max_retries: 1, initial_wait: 1ms, on: [timeout]}", http.StatusGatewayTimeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := goodHits.Load()
			gw, _ := routingGateway(t, fmt.Sprintf(`
backends:
  - {url: %q, name: stuck, write_timeout: 300ms}
  - {url: %q, name: good}
routing: {load_balance_strategy: round_robin, retry: %s}
server: {max_body_bytes: 67108864}
api_keys: [{key: %q}]
`, stuck, good.URL, c.retry, testKey))
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+testKey)
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("after %v: %v", time.Since(start), err)
			}
			defer resp.Body.Close()
			var e struct {
				Error struct{ Code string }
			}
			_ = json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != c.want {
				t.Fatalf("%d %q, want %d", resp.StatusCode, e.Error.Code, c.want)
			}
			if c.want == http.StatusGatewayTimeout && e.Error.Code != "backend_timeout" {
				t.Errorf("code %q, want backend_timeout", e.Error.Code)
			}
			if hits := goodHits.Load() - before; (c.want == http.StatusOK) != (hits == 1) {
				t.Errorf("the other backend was tried %d times", hits)
			}
		})
	}
}

// TestBackendFailingMidReplyFailsTheClientsReply: a backend that breaks off
// a chunked reply that is not a stream leaves
// the client a reply that visibly failed (its connection cut before the
// end), not a complete-looking 200 with half a JSON body; the event says
// backend_error. The client got a well-ended chunked reply.
func TestBackendFailingMidReplyFailsTheClientsReply(t *testing.T) {
	for _, c := range []struct{ name, head, body string }{
		{"chunked", "Transfer-Encoding: chunked\r\n", "7\r\n{\"id\":1\r\n"},
		{"chunked, torn inside a chunk", "Transfer-Encoding: chunked\r\n", "20\r\n{\"id\":1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer conn.Close()
						req, err := http.ReadRequest(bufio.NewReader(conn))
						if err != nil {
							return
						}
						_, _ = io.Copy(io.Discard, req.Body)
						_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"+c.head+"\r\n"+c.body)
					}()
				}
			}()
			gw, s := newTestGateway(t, "http://"+ln.Addr().String(), "")
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1"}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			// The cut comes before the head or in the body: the
			// gateway holds a reply's last piece back until its end.
			if resp, err := http.DefaultClient.Do(req); err == nil {
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("the client read %d %q as a whole reply", resp.StatusCode, b)
				}
			}
			if ev := s.next(t); ev.Error != "backend_error" {
				t.Errorf("event error %q, want backend_error", ev.Error)
			}
		})
	}
}
