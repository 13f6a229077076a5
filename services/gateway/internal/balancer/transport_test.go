package balancer

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// closingServer answers every request on a connection and then closes it
// without Connection: close, as llama.cpp's server does after a stream. It
// records whether a request carried an idempotency header on the wire.
func closingServer(t *testing.T, sawKey *atomic.Bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if _, ok := req.Header["X-Idempotency-Key"]; ok {
					sawKey.Store(true)
				}
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestReplayTransportResendsOnClosedKeepAlive: POSTs are resent on a
// kept-alive connection the backend closed, whether ReplayTransport marks
// them (on a copy of their header) or the caller did with MarkReplayable.
func TestReplayTransportResendsOnClosedKeepAlive(t *testing.T) {
	for _, marked := range []bool{false, true} {
		var sawKey atomic.Bool
		url := closingServer(t, &sawKey)
		rt := NewTransport(config.Backend{URL: url})
		for i := range 50 {
			req, err := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if marked {
				MarkReplayable(req)
			}
			resp, err := rt.RoundTrip(req)
			if err != nil {
				t.Fatalf("marked %v, request %d: %v", marked, i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ok" {
				t.Fatalf("marked %v, request %d: body %q", marked, i, b)
			}
			if _, ok := req.Header["X-Idempotency-Key"]; ok != marked {
				t.Fatal("RoundTrip modified the caller's request")
			}
		}
		if sawKey.Load() {
			t.Fatalf("marked %v: the empty idempotency marker went on the wire", marked)
		}
	}
}

func TestReplayTransportDownBackendFailsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(`{}`))
	if _, err := NewTransport(config.Backend{URL: url}).RoundTrip(req); err == nil {
		t.Fatal("a request to a closed port succeeded")
	}
}
