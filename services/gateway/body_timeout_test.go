package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestBodyTimeout: a request body that stops coming for server.body_timeout
// is refused with 408 (and recorded); one that keeps coming, however
// slowly, is served; and the deadline is gone once the body is read, so a
// reply that takes longer than body_timeout is not cut.
func TestBodyTimeout(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("slow") != "" {
			time.Sleep(600 * time.Millisecond)
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
backends: [{url: %q}]
api_keys: [{key: %q, id: unit}]
server: { body_timeout: 200ms }
`, backend.URL, testKey)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gw, s := serveConfig(t, cfg)
	addr := strings.TrimPrefix(gw.URL, "http://")
	body := `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`

	// send writes the request's head and then its body in pieces, gap
	// apart, and returns the response.
	send := func(t *testing.T, path string, pieces []string, gap time.Duration) *http.Response {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, testKey, len(body))
		for _, p := range pieces {
			time.Sleep(gap)
			if _, err := io.WriteString(c, p); err != nil {
				t.Fatal(err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	t.Run("stalled", func(t *testing.T) {
		start := time.Now()
		resp := send(t, "/v1/chat/completions", []string{body[:10]}, 0)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), `"code":"request_timeout"`) {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("refused after %v", d)
		}
		if ev := s.next(t); ev.StatusCode != http.StatusRequestTimeout || ev.Error != "request_timeout" {
			t.Fatalf("event status %d error %q", ev.StatusCode, ev.Error)
		}
	})
	t.Run("slow but steady", func(t *testing.T) {
		var pieces []string
		for i := 0; i < len(body); i += 10 {
			pieces = append(pieces, body[i:min(i+10, len(body))])
		}
		// 6 pieces 100ms apart: 600ms in all, three times body_timeout.
		resp := send(t, "/v1/chat/completions", pieces, 100*time.Millisecond)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != `{"ok":true}` {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		s.next(t)
	})
	t.Run("reply slower than body_timeout", func(t *testing.T) {
		resp := send(t, "/v1/chat/completions?slow=1", []string{body}, 0)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != `{"ok":true}` {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		s.next(t)
	})
}

// TestBodyCutByTheClient: a client whose connection closes before its
// declared body ends left; its event says so (499 client_closed_request),
// not that it sent a bad body (400).
func TestBodyCutByTheClient(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the backend was asked")
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	c, err := net.Dial("tcp", strings.TrimPrefix(gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{\"model\":", testKey)
	c.Close()
	if ev := s.next(t); ev.StatusCode != 499 || ev.Error != "client_closed_request" {
		t.Fatalf("event status %d, error %q; want 499 client_closed_request", ev.StatusCode, ev.Error)
	}
}

// TestRefusalBeforeTheBodyIsNotHeld: a request refused before its body is
// read (no key, a bad key) gets its reply at once even when the client
// stops sending the body, and the connection closes after it; net/http
// alone would first read the rest of the body, and a client that stalled
// held the connection, without a reply, for as long as it liked.
func TestRefusalBeforeTheBodyIsNotHeld(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
backends: [{url: %q}]
api_keys: [{key: %q, id: unit}, {key: sk-llmproxy-unit-elsewhere-0044, id: far, allowed_ips: [192.0.2.0/24]}]
server: { body_timeout: 60s }
`, backend.URL, testKey)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gw, _ := serveConfig(t, cfg)
	addr := strings.TrimPrefix(gw.URL, "http://")
	for _, tc := range []struct{ name, head string }{
		{"no key", "Content-Length: 100000\r\n"},
		{"bad key", "Authorization: Bearer sk-not-a-key-0000\r\nContent-Length: 100000\r\n"},
		{"chunked, no key", "Transfer-Encoding: chunked\r\n"},
		{"key from another address", "Authorization: Bearer sk-llmproxy-unit-elsewhere-0044\r\nContent-Length: 100000\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%s\r\n", tc.head)
			if strings.Contains(tc.head, "chunked") {
				_, _ = io.WriteString(c, "a\r\n{\"model\":1")
			} else {
				_, _ = io.WriteString(c, `{"model":1`)
			}
			_ = c.SetReadDeadline(time.Now().Add(refusedBodyLinger / 2))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no reply while the body is stalled: %v", err)
			}
			_ = c.SetReadDeadline(time.Now().Add(refusedBodyLinger + 5*time.Second))
			_, _ = io.ReadAll(resp.Body)
			want := http.StatusUnauthorized
			if strings.Contains(tc.head, "elsewhere") {
				want = http.StatusForbidden
			}
			if resp.StatusCode != want || !resp.Close {
				t.Fatalf("%d, close %v; want %d and the connection closed", resp.StatusCode, resp.Close, want)
			}
			// The connection ends once refusedBodyLinger has passed.
			if _, err := br.ReadByte(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the connection stays open after the reply: %v", err)
			}
		})
	}
	// A client that sent its whole body has it read, and its reply is
	// not lost to a reset.
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		body := strings.Repeat("x", 64<<10)
		fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("a client that sent its body lost the reply: %v", err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%d %s %v", resp.StatusCode, b, err)
		}
		c.Close()
	}
}
